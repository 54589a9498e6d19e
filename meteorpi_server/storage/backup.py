"""Backups taken while the server runs, and restoring one into an empty place.

A backup directory holds:

``meteorpi.db`` or ``meteorpi.pgdump``
    the database: SQLite's online backup API (one consistent snapshot; in WAL mode
    writers go on meanwhile), or ``pg_dump --format=custom`` of one exported snapshot.
``files/<2 hex digits>/<file id>``
    the bytes of every blob the copied database's ``stored_blob`` rows name, laid out as
    in the file store.
``manifest.tsv``
    one line per file in ``files/``: file id, md5, size (each md5 checked while copying).
``backup.json``
    what was backed up and what went wrong; written last, so a directory without it is an
    unfinished backup, which ``restore`` refuses.

Why the database goes first: the bytes of a blob reach their final path before its row
is written, and bytes a stored record relies on are never replaced or removed
(``blobs.py``), so every file a record in the copy relies on is still in the store once
the copy is taken. Bytes that arrive later belong to rows the copy does not have, and are
not needed. Only blobs no record claims (data waiting for its record) may go meanwhile:
swept as orphans, or replaced by an exporter sending other bytes. Those are noted and left
out (restore deletes their rows, so no row names bytes that are not there). A blob that a
record relies on and that is missing, or whose bytes no longer match its md5, is a
problem: it is reported, never copied as if it were right, and the command fails.

Hard links: the file store never rewrites a file in place. Bytes are written under
``.uploads/`` and renamed over the final path (``FileStore.adopt``, ``FileGroup.commit``),
and removal unlinks the path (``FileStore.remove``); nothing opens a final path for
writing. So a hard link to a stored file keeps exactly the bytes it linked, whatever the
store does afterwards, and costs no space or copying when the backup directory is on the
same file system. (It shares the disk blocks, so it protects against the server's
mistakes and deletions, not against the disk: keep a copy elsewhere too, or use
``--copy``.)
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import sqlite3
import subprocess
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, TextIO

from sqlalchemy import delete, exists, select, text
from sqlalchemy.engine import URL
from sqlalchemy.orm import Session

from meteorpi_model import MD5Stream

from . import store
from .db import Database
from .files import _SYNCFS, CHUNK_SIZE, LOCKS_DIR, FileStore, Md5Mismatch
from .orm import FileRecordRow, StoredBlobRow

SQLITE_COPY = "meteorpi.db"
POSTGRES_DUMP = "meteorpi.pgdump"
FILES_DIR = "files"
MANIFEST = "manifest.tsv"
SUMMARY = "backup.json"
FORMAT = 1

log = logging.getLogger("meteorpi.backup")


class BackupError(Exception):
    """A backup or restore cannot be done; the message is one line saying why."""


# Progress ----------------------------------------------------------------------------------

class Progress:
    """Told how the copying of bytes goes; does nothing (subclasses show it)."""

    def start(self, what: str, files: int, total_bytes: int) -> None:
        """``files`` files of ``total_bytes`` bytes are to be copied."""

    def advance(self, size: int) -> None:
        """One more file, of ``size`` bytes, is done with (copied or not)."""

    def close(self) -> None:
        """The copying is over."""


class LogProgress(Progress):
    """A log line at each tenth of the files: for logs, cron mail and systemd."""

    def start(self, what: str, files: int, total_bytes: int) -> None:
        self.what, self.total, self.done, self.bytes = what, files, 0, 0
        self.step = max(1, files // 10)
        self.started = time.monotonic()
        log.info("%s: %d files, %s", what, files, _format_bytes(total_bytes))

    def advance(self, size: int) -> None:
        self.done += 1
        self.bytes += size
        if self.done % self.step == 0 or self.done == self.total:
            log.info("%s: %d/%d files, %s in %.1f s", self.what, self.done, self.total,
                     _format_bytes(self.bytes), time.monotonic() - self.started)


class BarProgress(Progress):
    """A tqdm bar of bytes, on a terminal."""

    def __init__(self, stream: TextIO):
        self.stream = stream
        self.bar = None

    def start(self, what: str, files: int, total_bytes: int) -> None:
        from tqdm import tqdm

        self.close()
        self.bar = tqdm(total=total_bytes, desc=f"{what} ({files} files)", unit="B",
                        unit_scale=True, unit_divisor=1024, file=self.stream,
                        dynamic_ncols=True)

    def advance(self, size: int) -> None:
        self.bar.update(size)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def progress_for(stream: TextIO) -> Progress:
    """A bar if ``stream`` is a terminal, else log lines."""
    isatty = getattr(stream, "isatty", None)
    return BarProgress(stream) if isatty is not None and isatty() else LogProgress()


def _format_bytes(count: float) -> str:
    from ..exporter.progress import format_bytes

    return format_bytes(count)


# Backing up --------------------------------------------------------------------------------

@dataclass(frozen=True)
class Blob:
    """A ``stored_blob`` row of the copied database, and whether a file record uses it."""

    file_id: uuid.UUID
    md5: str
    size: int
    relied_on: bool


@dataclass
class BackupResult:
    directory: Path
    database_file: str
    records: dict[str, int]
    files: int = 0
    bytes: int = 0
    linked: int = 0
    # Blobs no record claimed that went (swept, or replaced) after the database copy.
    skipped: list[uuid.UUID] = field(default_factory=list)
    # Blobs records rely on: missing, or with bytes that do not match their row's md5.
    missing: list[uuid.UUID] = field(default_factory=list)
    changed: list[uuid.UUID] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def problems(self) -> list[str]:
        return ([f"file {file_id.hex}: bytes missing from the file store"
                 for file_id in self.missing]
                + [f"file {file_id.hex}: bytes on disk no longer match the md5 in the database "
                   "(changed in place after they were stored); not backed up"
                   for file_id in self.changed])

    def summary(self) -> str:
        counts = ", ".join(f"{count} {name}" for name, count in self.records.items())
        line = (f"backed up the database ({counts}) and {self.files} files "
                f"({_format_bytes(self.bytes)}, {self.linked} hard-linked) into "
                f"{self.directory} in {self.seconds:.1f} s")
        if self.skipped:
            line += (f"; {len(self.skipped)} files no record used went meanwhile "
                     "and are left out")
        return line


def backup(database: Database, files: FileStore, directory: str | os.PathLike,
           progress: Progress | None = None, link: bool = True) -> BackupResult:
    """Back up ``database`` and the bytes its records rely on into ``directory`` (new or
    empty). The server may go on meanwhile. Hard-links files where it can, unless
    ``link`` is false. Raises BackupError (one line) if it cannot be done at all; the
    result's ``problems`` say what is wrong with a backup that was made.
    """
    progress = progress or Progress()
    directory = Path(directory)
    _require_empty_directory(directory)
    started = time.monotonic()
    if database.is_sqlite:
        database_file = SQLITE_COPY
        blobs, records, revision = _copy_sqlite(database, directory / database_file)
    else:
        database_file = POSTGRES_DUMP
        blobs, records, revision = _dump_postgres(database, directory / database_file)
    result = BackupResult(directory, database_file, records)
    blobs.sort(key=lambda blob: blob.file_id)
    target = FileStore(directory / FILES_DIR)
    with open(directory / MANIFEST, "w") as manifest:
        manifest.write("file_id\tmd5\tsize\n")
        progress.start("backing up files", len(blobs), sum(blob.size for blob in blobs))
        try:
            for blob in blobs:
                outcome = _copy_blob(files, target, blob, link)
                # A link that failed (another file system) fails for every file: copy on.
                link = link and outcome != "copied"
                if outcome in ("linked", "copied"):
                    manifest.write(f"{blob.file_id.hex}\t{blob.md5}\t{blob.size}\n")
                    result.files += 1
                    result.bytes += blob.size
                    result.linked += outcome == "linked"
                elif not blob.relied_on:
                    result.skipped.append(blob.file_id)
                elif outcome == "missing":
                    result.missing.append(blob.file_id)
                else:
                    result.changed.append(blob.file_id)
                progress.advance(blob.size)
        finally:
            progress.close()
    result.seconds = time.monotonic() - started
    for problem in result.problems:
        log.error("backup: %s", problem)
    _write_json(directory / SUMMARY, {
        "format": FORMAT, "database": database_file, "schema_revision": revision,
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "records": records, "files": result.files, "bytes": result.bytes,
        "skipped": [file_id.hex for file_id in result.skipped],
        "problems": result.problems})
    _sync(directory)
    return result


def _require_empty_directory(directory: Path) -> None:
    if directory.exists() and not directory.is_dir():
        raise BackupError(f"{directory} is not a directory: back up into a new or empty one")
    if directory.is_dir() and any(directory.iterdir()):
        raise BackupError(f"{directory} is not empty: back up into a new or empty directory")
    directory.mkdir(parents=True, exist_ok=True)


def _read_copy(session: Session) -> tuple[list[Blob], dict[str, int]]:
    """The blobs and the record counts of a copy (or of the snapshot it was taken from)."""
    relied_on = exists().where(FileRecordRow.file_id == StoredBlobRow.file_id)
    rows = session.execute(select(StoredBlobRow.file_id, StoredBlobRow.md5, StoredBlobRow.size,
                                  relied_on))
    blobs = [Blob(file_id, md5, size, bool(used)) for file_id, md5, size, used in rows]
    counts = store.count_rows(session)
    counts.pop("blobs", None)
    return blobs, counts


def _copy_sqlite(database: Database, destination: Path) -> tuple[list[Blob], dict, str | None]:
    path = database.url.database
    if not path or path == ":memory:" or not Path(path).is_file():
        raise BackupError(f"no SQLite database file at {path!r} to back up")
    # A single self-contained file, not one that needs its -wal beside it.
    _sqlite_online_copy(path, destination, "DELETE",
                        f"could not copy the SQLite database {path}")
    copy = Database(f"sqlite:///{destination}")
    try:
        with copy.read() as session:
            blobs, counts = _read_copy(session)
        revision = copy.current_revision()
    finally:
        copy.dispose()
    return blobs, counts, revision


def _libpq(url: URL) -> tuple[str, dict[str, str]]:
    """A libpq connection URI for ``url`` without its password, and the environment that
    gives the password (so it never shows in a process list)."""
    plain = url.set(drivername="postgresql", password=None)
    environment = dict(os.environ)
    if url.password is not None:
        environment["PGPASSWORD"] = str(url.password)
    return plain.render_as_string(hide_password=False), environment


def _postgres_tool(name: str) -> str:
    found = shutil.which(name)
    if found is None:
        raise BackupError(f"{name} not found: install the PostgreSQL client tools (Debian: "
                          "apt-get install postgresql-client), of the server's major version "
                          "or newer")
    return found


def _tool_failed(name: str, stderr: str) -> BackupError:
    lines = [line for line in stderr.strip().splitlines() if line.strip()]
    reason = lines[-1] if lines else "no message"
    return BackupError(f"{name} failed: {reason[:400]}")


def _dump_postgres(database: Database, destination: Path) -> tuple[list[Blob], dict, str | None]:
    pg_dump = _postgres_tool("pg_dump")
    uri, environment = _libpq(database.url)
    with database.engine.connect() as connection:
        connection = connection.execution_options(isolation_level="REPEATABLE READ")
        with connection.begin():
            connection.exec_driver_sql("SET TRANSACTION READ ONLY")
            # pg_dump reads this transaction's snapshot, and so does _read_copy: the dump
            # and the list of blobs to copy describe the same moment.
            snapshot = connection.exec_driver_sql("SELECT pg_export_snapshot()").scalar_one()
            dump = subprocess.Popen(
                [pg_dump, "--format=custom", f"--snapshot={snapshot}", "--no-password",
                 f"--file={destination}", f"--dbname={uri}"],
                env=environment, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
            try:
                with Session(bind=connection) as session:
                    blobs, counts = _read_copy(session)
                    revision = session.scalar(text("SELECT version_num FROM alembic_version"))
            finally:
                _, stderr = dump.communicate()
    if dump.returncode != 0:
        raise _tool_failed("pg_dump", stderr)
    return blobs, counts, revision


def _copy_blob(files: FileStore, target: FileStore, blob: Blob, link: bool) -> str:
    """Put ``blob``'s bytes in the backup, checked against its md5: 'linked', 'copied',
    'missing' or 'changed' (then nothing is kept)."""
    source = files.path_for(blob.file_id)
    destination = target.path_for(blob.file_id)
    destination.parent.mkdir(parents=True, exist_ok=True)
    outcome = "copied"
    try:
        if link:
            try:
                os.link(source, destination)
                outcome = "linked"
            except OSError as error:
                if isinstance(error, FileNotFoundError):
                    raise
                # Another file system (EXDEV), or one without hard links: copy instead.
        if outcome == "linked":
            # The link is the very inode that was stored; reading it checks what the
            # backup holds (see the module docstring on why it cannot change under us).
            with open(destination, "rb") as handle:
                md5, size = _hash(handle)
        else:
            with open(source, "rb") as handle, open(destination, "wb") as out:
                md5, size = _hash(handle, out)
    except FileNotFoundError:
        destination.unlink(missing_ok=True)
        return "missing"
    if md5 != blob.md5 or size != blob.size:
        destination.unlink(missing_ok=True)
        return "changed"
    return outcome


def _hash(source, out=None) -> tuple[str, int]:
    hasher = MD5Stream()
    while chunk := source.read(CHUNK_SIZE):
        hasher.update(chunk)
        if out is not None:
            out.write(chunk)
    return hasher.hexdigest(), hasher.bytes_seen


def _write_json(path: Path, document: dict) -> None:
    temporary = path.with_suffix(".tmp")
    temporary.write_text(json.dumps(document, indent=1) + "\n")
    os.replace(temporary, path)


def _sync(directory: Path) -> None:
    """Make everything written under ``directory`` durable (its file system, at once)."""
    descriptor = os.open(directory, os.O_RDONLY)
    try:
        if _SYNCFS is not None and _SYNCFS(descriptor) == 0:
            return
    finally:
        os.close(descriptor)
    os.sync()


# Restoring ---------------------------------------------------------------------------------

@dataclass
class RestoreResult:
    records: dict[str, int]
    files: int = 0
    bytes: int = 0
    # Files the backup could not give back verified, and records left without bytes.
    problems: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def summary(self) -> str:
        counts = ", ".join(f"{count} {name}" for name, count in self.records.items())
        return (f"restored {sum(self.records.values())} records ({counts}) and {self.files} "
                f"files ({_format_bytes(self.bytes)}), each md5 verified, in "
                f"{self.seconds:.1f} s")


def read_summary(directory: Path) -> dict:
    try:
        summary = json.loads((directory / SUMMARY).read_text())
    except FileNotFoundError:
        raise BackupError(f"{directory} holds no finished backup (no {SUMMARY})") from None
    except ValueError as error:
        raise BackupError(f"{directory / SUMMARY} is not readable JSON: {error}") from None
    if summary.get("format") != FORMAT:
        raise BackupError(f"{directory / SUMMARY}: unknown backup format {summary.get('format')!r}")
    return summary


def restore(database: Database, files: FileStore, directory: str | os.PathLike,
            progress: Progress | None = None) -> RestoreResult:
    """Restore the backup in ``directory`` into ``database`` and ``files``, both empty.

    Every file's md5 is checked against the manifest as it is written. Raises BackupError
    (one line) if it cannot start; the result's ``problems`` say which records lack bytes.
    """
    progress = progress or Progress()
    directory = Path(directory)
    summary = read_summary(directory)
    expected = SQLITE_COPY if database.is_sqlite else POSTGRES_DUMP
    if summary["database"] != expected:
        kind = "SQLite" if database.is_sqlite else "PostgreSQL"
        raise BackupError(f"the backup in {directory} holds {summary['database']}, but the "
                          f"configured database is {kind}")
    _require_empty_database(database)
    _require_empty_store(files)
    started = time.monotonic()
    if database.is_sqlite:
        _restore_sqlite(directory / SQLITE_COPY, database)
    else:
        _restore_postgres(directory / POSTGRES_DUMP, database)
    manifest = list(_read_manifest(directory / MANIFEST))
    result = RestoreResult({})
    restored = _restore_files(directory, files, manifest, progress, result)
    with database.write() as session:
        # Rows of bytes the backup does not hold (waiting data that went before it was
        # copied, or bytes that failed their check): no row may name bytes not in the store.
        held = dict(session.execute(select(StoredBlobRow.file_id, StoredBlobRow.md5)).all())
        unheld = [file_id for file_id, md5 in held.items() if restored.get(file_id) != md5]
        for start in range(0, len(unheld), 500):
            session.execute(delete(StoredBlobRow)
                            .where(StoredBlobRow.file_id.in_(unheld[start:start + 500])))
        without = list(session.scalars(select(FileRecordRow.file_id).where(
            ~exists().where(StoredBlobRow.file_id == FileRecordRow.file_id))))
        result.records = store.count_rows(session)
        result.records.pop("blobs", None)
    result.problems += [f"file record {file_id.hex}: its bytes are not in the backup"
                        for file_id in without]
    result.seconds = time.monotonic() - started
    return result


def _require_empty_database(database: Database) -> None:
    where = database.url.render_as_string(hide_password=True)
    if database.is_sqlite:
        path = database.url.database
        if not path or path == ":memory:":
            raise BackupError("restore needs a SQLite database file, not an in-memory one")
        if not Path(path).exists() or Path(path).stat().st_size == 0:
            return
        query = "SELECT count(*) FROM sqlite_master WHERE type = 'table'"
    else:
        query = ("SELECT count(*) FROM information_schema.tables "
                 "WHERE table_schema NOT IN ('pg_catalog', 'information_schema')")
    with database.engine.connect() as connection:
        tables = connection.exec_driver_sql(query).scalar_one()
    if tables:
        raise BackupError(f"the database {where} is not empty ({tables} tables): restore "
                          "into a new, empty database")


def _require_empty_store(files: FileStore) -> None:
    if not files.root.exists():
        return
    if not files.root.is_dir():
        raise BackupError(f"the file store {files.root} is not a directory")
    for folder, directories, names in os.walk(files.root):
        if Path(folder) == files.root and LOCKS_DIR in directories:
            directories.remove(LOCKS_DIR)  # empty lock files, made by any look at the store
        if names:
            raise BackupError(f"the file store {files.root} is not empty: restore into a new, "
                              "empty directory")


def _restore_sqlite(copy: Path, database: Database) -> None:
    database.dispose()
    path = Path(database.url.database)
    path.parent.mkdir(parents=True, exist_ok=True)
    _sqlite_online_copy(copy, path, "WAL",
                        f"could not restore the SQLite database into {path}")


def _sqlite_online_copy(source_path, target_path, journal_mode: str, failure: str) -> None:
    """Copy one SQLite database into another with the online backup API, then set the
    copy's journal mode. All pages go in one step: one read transaction, so one
    consistent snapshot; in WAL mode the source's writers are not held up by it."""
    source = sqlite3.connect(source_path, timeout=30)
    target = sqlite3.connect(target_path)
    try:
        source.backup(target)
        target.execute(f"PRAGMA journal_mode={journal_mode}")
    except sqlite3.Error as error:
        raise BackupError(f"{failure}: {error}") from None
    finally:
        target.close()
        source.close()


def _restore_postgres(dump: Path, database: Database) -> None:
    pg_restore = _postgres_tool("pg_restore")
    uri, environment = _libpq(database.url)
    # No owners or grants from the dumped server: the restoring user owns everything.
    finished = subprocess.run(
        [pg_restore, "--no-owner", "--no-privileges", "--exit-on-error", "--single-transaction",
         "--no-password", f"--dbname={uri}", str(dump)],
        env=environment, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        check=False)
    if finished.returncode != 0:
        raise _tool_failed("pg_restore", finished.stderr)


def _read_manifest(path: Path) -> Iterator[tuple[uuid.UUID, str, int]]:
    try:
        with open(path) as manifest:
            next(manifest, None)  # the header
            for line in manifest:
                file_id, md5, size = line.rstrip("\n").split("\t")
                yield uuid.UUID(hex=file_id), md5, int(size)
    except FileNotFoundError:
        raise BackupError(f"the backup has no {MANIFEST}") from None
    except ValueError as error:
        raise BackupError(f"{path} is damaged: {error}") from None


# Files verified then made durable together (one syncfs for the lot): FileGroup's batches.
_GROUP_FILES = 500
_GROUP_BYTES = 256 << 20


def _restore_files(directory: Path, files: FileStore, manifest: list, progress: Progress,
                   result: RestoreResult) -> dict[uuid.UUID, str]:
    """Write each manifest file into the store, checking its md5; return those written."""
    source = FileStore(directory / FILES_DIR)
    restored: dict[uuid.UUID, str] = {}
    group, pending_files, pending_bytes = files.group(), 0, 0

    def commit() -> None:
        for stored in group.commit():
            restored[stored.file_id] = stored.md5
            result.files += 1
            result.bytes += stored.size

    progress.start("restoring files", len(manifest), sum(size for _, _, size in manifest))
    try:
        for file_id, md5, size in manifest:
            try:
                with source.open(file_id) as handle:
                    group.write(file_id, handle, md5)
                pending_files += 1
                pending_bytes += size
            except FileNotFoundError:
                result.problems.append(f"file {file_id.hex}: missing from the backup")
            except Md5Mismatch as error:
                result.problems.append(f"file {file_id.hex}: {error} (damaged in the backup)")
            progress.advance(size)
            if pending_files >= _GROUP_FILES or pending_bytes >= _GROUP_BYTES:
                commit()
                pending_files = pending_bytes = 0
        commit()
    finally:
        progress.close()
    return restored


__all__ = ["BackupError", "BackupResult", "BarProgress", "LogProgress", "Progress",
           "RestoreResult", "backup", "progress_for", "read_summary", "restore"]
