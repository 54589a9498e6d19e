"""Readiness: can this server do its work now? (``GET /health/ready``)

Four checks, each with a reason that says what is wrong and what to do:

``database``
    the database answers a query within :data:`DATABASE_TIMEOUT_SECONDS`. The query runs
    on a thread of its own and the probe stops waiting at the deadline, so a database
    that hangs (a lost network, a lock) makes the probe fail, not hang. While a check
    is still waiting on a hung database, the next probe does not start another: it
    fails at once, saying so, so probes every few seconds never pile up threads or
    connections.
``schema``
    the database's Alembic revision is the newest in ``migrations/`` (the newest is read
    once per process).
``file_store``
    a small file can be created, written, fsynced and removed under the store (in its
    ``.uploads/``, where uploads begin and ``files gc`` clears leftovers): permission
    bits say nothing to root, and a file system remounted read-only after an error
    keeps them.
``disk_space``
    the store's file system has at least ``min_free_bytes`` free (``os.statvfs``, the
    space an unprivileged user may use).

With a bucket as the file store, ``file_store`` writes and removes a small object in it
(with time-outs of a few seconds), and ``disk_space`` watches ``cache_dir``'s disk.

Liveness (``GET /health``) needs none of this: the process answers, so it can serve.
"""
from __future__ import annotations

import errno
import functools
import os
import secrets
import threading
import time
import weakref
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import text

from ..storage.db import MIGRATIONS_DIR, Database
from ..storage.files import UPLOADS_DIR

if TYPE_CHECKING:
    from ..services import Services

DATABASE_TIMEOUT_SECONDS = 3.0


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    reason: str
    details: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"name": self.name, "ok": self.ok, **self.details, "reason": self.reason}


@dataclass(frozen=True)
class Readiness:
    checks: list[Check]

    @property
    def ok(self) -> bool:
        return all(check.ok for check in self.checks)

    def check(self, name: str) -> Check:
        return next(check for check in self.checks if check.name == name)

    def to_dict(self) -> dict:
        return {"status": "ok" if self.ok else "failing",
                "checks": [check.to_dict() for check in self.checks]}


def readiness(services: Services, database_timeout: float = DATABASE_TIMEOUT_SECONDS) -> Readiness:
    """Run every check (each on its own: a failing database still lets the file store be
    checked) and return them."""
    database, schema = _database_checks(services.database, database_timeout)
    files = services.files
    if files.kind == "local":
        root = Path(services.config.file_store)
        return Readiness([database, schema, file_store_check(root),
                          disk_space_check(root, services.config.min_free_bytes)])
    # A bucket has no free space to watch; the local disk this host still writes to (its
    # cache: thumbnails, lock files) does.
    return Readiness([database, schema, bucket_check(files),
                      disk_space_check(Path(services.config.cache_dir),
                                       services.config.min_free_bytes)])


# The database and its schema -------------------------------------------------------------

@functools.cache
def head_revision() -> str | None:
    """The newest migration in ``migrations/``, read once per process (it changes only
    with the code)."""
    from alembic.config import Config as AlembicConfig
    from alembic.script import ScriptDirectory

    config = AlembicConfig()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    return ScriptDirectory.from_config(config).get_current_head()


class _Probe:
    """One database query at a time, on a thread, with a deadline for the waiter."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.running: threading.Thread | None = None
        self.started = 0.0


_probes: weakref.WeakKeyDictionary[Database, _Probe] = weakref.WeakKeyDictionary()
_probes_lock = threading.Lock()


def _query(database: Database) -> str | None:
    """Ask the database something and read its Alembic revision."""
    from alembic.runtime.migration import MigrationContext

    with database.engine.connect() as connection:
        if connection.dialect.name == "postgresql":
            # The server gives up too, rather than leave a query running for nobody.
            connection.execute(text("SET LOCAL statement_timeout = 10000"))
        connection.execute(text("SELECT 1"))
        return MigrationContext.configure(connection).get_current_revision()


def _database_checks(database: Database, timeout: float) -> tuple[Check, Check]:
    where = database.url.render_as_string(hide_password=True)
    with _probes_lock:
        probe = _probes.setdefault(database, _Probe())
    with probe.lock:
        if probe.running is not None and probe.running.is_alive():
            waited = time.monotonic() - probe.started
            reason = (f"the database {where} has not answered a query for {waited:.0f} s "
                      "(an earlier check is still waiting); check that it is running and "
                      "reachable from this host")
            return Check("database", False, reason), _unknown_schema()
        outcome: dict[str, Any] = {}

        def run() -> None:
            try:
                outcome["revision"] = _query(database)
            except Exception as error:  # any failure means "does not answer"
                outcome["error"] = error

        thread = threading.Thread(target=run, name="health-database", daemon=True)
        probe.running, probe.started = thread, time.monotonic()
        thread.start()
    started = time.monotonic()
    thread.join(timeout)
    elapsed_ms = (time.monotonic() - started) * 1000
    if "error" in outcome:
        error = outcome["error"]
        error = getattr(error, "orig", None) or error  # the driver's words, not SQLAlchemy's
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else ""
        reason = (f"the database {where} could not be queried: {type(error).__name__}: "
                  f"{first_line}; check that it is running and reachable, and database_url")
        return Check("database", False, reason), _unknown_schema()
    if "revision" not in outcome:
        reason = (f"the database {where} did not answer a query within {timeout:g} s; check "
                  "that it is running and reachable from this host, and not overloaded")
        return Check("database", False, reason), _unknown_schema()
    database_check = Check("database", True, f"answered in {elapsed_ms:.0f} ms")
    return database_check, schema_check(outcome["revision"], head_revision(), where)


def _unknown_schema() -> Check:
    return Check("schema", False, "not checked: the database did not answer")


def schema_check(current: str | None, head: str | None, where: str = "") -> Check:
    if current == head:
        return Check("schema", True, f"at revision {head}, the newest")
    state = "has no schema" if current is None else f"is at revision {current}"
    return Check("schema", False, f"the database {where + ' ' if where else ''}{state}, the "
                                  f"code needs {head}: run 'meteorpi db upgrade' (with the "
                                  "server's --config)")


# The file store ------------------------------------------------------------------------

def file_store_check(root: Path) -> Check:
    """Create, write, fsync and remove a small file in the store's ``.uploads/`` (made,
    with the store itself, if missing, as the first upload would make them)."""
    directory = root / UPLOADS_DIR
    probe = directory / f".health-{os.getpid()}-{secrets.token_hex(4)}"
    try:
        directory.mkdir(parents=True, exist_ok=True)
        descriptor = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.write(descriptor, b"meteorpi health check\n")
            os.fsync(descriptor)
        finally:
            os.close(descriptor)
        os.unlink(probe)
    except OSError as error:
        kind, advice = _STORE_ERRORS.get(
            error.errno or 0, ("not writable", "check its disk, and that it is a directory the "
                                               "server's user may write to"))
        return Check("file_store", False,
                     f"the file store {root} is {kind}: {error.strerror or error} "
                     f"({error.filename or probe}); {advice}")
    return Check("file_store", True, f"{root} is writable")


def bucket_check(files) -> Check:
    """Read and write the bucket, as at start-up, with short time-outs and no retries, so
    an unreachable S3 server fails the probe within seconds."""
    from ..storage.s3 import S3Unavailable

    try:
        files.check()
    except S3Unavailable as error:
        return Check("file_store", False, str(error))
    return Check("file_store", True, f"{files.describe()} is writable")


_STORE_ERRORS = {
    errno.EROFS: ("read-only", "remount its file system read-write, or find out why the "
                               "kernel made it read-only (dmesg)"),
    errno.EACCES: ("not writable by this server", "give the server's user write access to it"),
    errno.EPERM: ("not writable by this server", "give the server's user write access to it"),
    errno.ENOSPC: ("full", "free space on its disk"),
    errno.EDQUOT: ("over its disk quota", "free space, or raise the quota"),
}


def _existing(path: Path) -> Path:
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def disk_space_check(root: Path, min_free_bytes: int) -> Check:
    where = _existing(root)
    try:
        stats = os.statvfs(where)
    except OSError as error:
        return Check("disk_space", False, f"cannot read the free space of {where}: {error}",
                     {"free_bytes": None, "min_free_bytes": min_free_bytes})
    free = stats.f_bavail * stats.f_frsize
    details = {"free_bytes": free, "min_free_bytes": min_free_bytes}
    if free < min_free_bytes:
        return Check("disk_space", False,
                     f"only {_size(free)} free on the file system of {where}, below "
                     f"min_free_bytes ({_size(min_free_bytes)}); free space on it (meteorpi "
                     "files gc removes leftovers) or give it a larger disk", details)
    return Check("disk_space", True, f"{_size(free)} free on the file system of {where}", details)


def _size(count: int) -> str:
    value = float(count)
    for unit in ("bytes", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{count} bytes" if unit == "bytes" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{count} bytes"
