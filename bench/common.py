"""What the benchmarks share: progress lines, databases, the ``meteorpi`` command, a
server on a free port, choosing databases and collecting samples.

Each script in bench/ imports these from here (running ``python bench/X.py`` puts bench/
on the import path), so a fix to, say, how a server is stopped reaches all of them.
"""
from __future__ import annotations

import contextlib
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Iterator, TypeVar

import requests
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

POSTGRES_URL = os.environ.get("METEORPI_BENCH_POSTGRES_URL",
                              "postgresql+psycopg://postgres@127.0.0.1:5432/test")
#: The ``meteorpi`` command of the interpreter running the benchmark (the project's venv).
METEORPI = Path(sys.executable).parent / "meteorpi"
#: gthread workers of each ``meteorpi serve`` the benchmarks start.
WORKERS = 2
STARTED = time.perf_counter()
T = TypeVar("T")


class BenchError(RuntimeError):
    """Something the benchmark cannot measure past: a failed command or a failed export."""


def progress(message: str) -> None:
    """A line on stderr, stamped with the seconds since the benchmark started."""
    print(f"[{time.perf_counter() - STARTED:6.1f}s] {message}", file=sys.stderr, flush=True)


# Databases ----------------------------------------------------------------------------

def postgres_problem() -> str | None:
    """Why PostgreSQL cannot be used, or None if it answers."""
    try:
        engine = create_engine(POSTGRES_URL, connect_args={"connect_timeout": 3})
        with engine.connect() as connection:
            connection.execute(text("SELECT 1"))
        engine.dispose()
    except Exception as error:  # any failure to connect means "not reachable"
        return f"{type(error).__name__}: {str(error).splitlines()[0]}"
    return None


def row_counts(database_url: str) -> dict[str, int]:
    """How many rows of each kind a server's database holds (``store.count_rows``)."""
    from meteorpi_server.storage import store
    from meteorpi_server.storage.db import Database

    database = Database(database_url)
    try:
        with database.read() as session:
            return store.count_rows(session)
    finally:
        database.dispose()


@contextlib.contextmanager
def fresh_database(kind: str, sqlite_path: Path, label: str = "") -> Iterator[str]:
    """The URL of an empty database of ``kind``: the SQLite file ``sqlite_path`` (its
    directory is the caller's to remove), or a PostgreSQL database named after ``label``,
    dropped afterwards."""
    if kind == "sqlite":
        yield f"sqlite:///{sqlite_path}"
        return
    name = "_".join(part for part in ("meteorpi_bench", label, str(os.getpid()),
                                      secrets.token_hex(4)) if part)
    admin = create_engine(POSTGRES_URL, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as connection:
            connection.execute(text(f'CREATE DATABASE "{name}"'))
        try:
            yield make_url(POSTGRES_URL).set(database=name).render_as_string(hide_password=False)
        finally:
            with admin.connect() as connection:
                connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    finally:
        admin.dispose()


def choose_databases(requested: str | None) -> list[str]:
    """The databases to benchmark; without a choice, PostgreSQL only if it answers."""
    if requested == "sqlite":
        return ["sqlite"]
    problem = postgres_problem()
    if problem is None:
        return ["postgresql"] if requested == "postgresql" else ["sqlite", "postgresql"]
    where = make_url(POSTGRES_URL).render_as_string(hide_password=True)
    if requested is None:
        print(f"note: PostgreSQL is not reachable at {where} ({problem}); benchmarking SQLite only",
              file=sys.stderr)
        return ["sqlite"]
    raise BenchError(f"PostgreSQL is not reachable at {where}: {problem}")


# The server ---------------------------------------------------------------------------

def meteorpi(config: Path, *arguments: str, stdin: str | None = None) -> None:
    """Run one ``meteorpi`` command; raise BenchError with its output if it fails."""
    completed = subprocess.run([str(METEORPI), "--config", str(config), *arguments], input=stdin,
                               capture_output=True, text=True, timeout=120)
    if completed.returncode != 0:
        raise BenchError(f"meteorpi {' '.join(arguments)} failed ({completed.returncode}):\n"
                         f"{completed.stdout}{completed.stderr}")


def free_port() -> int:
    """A loopback port free now (another process could take it before it is used)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_until_healthy(url: str, process: subprocess.Popen, seconds: float = 60) -> None:
    """Until ``url``/health answers 200; BenchError if the process exits or time runs out."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise BenchError(f"the server exited with status {process.returncode}")
        try:
            if requests.get(f"{url}/health", timeout=2).status_code == 200:
                return
        except requests.RequestException:
            pass
        time.sleep(0.1)
    raise BenchError(f"the server did not answer /health within {seconds:.0f} s")


def stop(process: subprocess.Popen) -> None:
    """SIGTERM (gunicorn's graceful stop), then SIGKILL if it lingers."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(35)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def log_tail(path: Path, lines: int = 40) -> str:
    """The last ``lines`` of a log file, for a failure message."""
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


@contextlib.contextmanager
def serving(config: Path, workers: int = WORKERS) -> Iterator[str]:
    """``meteorpi serve`` on a free loopback port; yields its base URL.

    If anything fails while it runs, the end of its log is printed to stderr.
    """
    port = free_port()
    log_path = config.with_suffix(".log")
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [str(METEORPI), "--config", str(config), "serve", "--port", str(port),
             "--workers", str(workers)], stdout=log, stderr=subprocess.STDOUT)
        try:
            url = f"http://127.0.0.1:{port}"
            start = time.perf_counter()
            wait_until_healthy(url, process)
            progress(f"  server up on {url} after {time.perf_counter() - start:.1f} s")
            yield url
        except BaseException:
            print(f"--- end of the server log {log_path} ---\n{log_tail(log_path)}\n---",
                  file=sys.stderr)
            raise
        finally:
            stop(process)


# Running a benchmark ---------------------------------------------------------------------

def missing_meteorpi() -> bool:
    """True (having said so) if the project's ``meteorpi`` command is not beside this Python."""
    if METEORPI.exists():
        return False
    print(f"error: {METEORPI} not found: run this with the project's virtualenv python",
          file=sys.stderr)
    return True


def measured(measure: Callable[[], T], show: Callable[[T], None], cleaned_up: str) -> int:
    """Run ``measure`` and ``show`` its figures; the exit status. A BenchError is one
    line and status 1; Ctrl-C says what was cleaned up on the way out (``cleaned_up``,
    e.g. "the servers were stopped") and is status 130."""
    try:
        figures = measure()
    except BenchError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"interrupted: {cleaned_up}", file=sys.stderr)
        return 130
    show(figures)
    progress("done")
    return 0


# Figures ------------------------------------------------------------------------------

def record(samples: dict[str, list[float]], **values: float) -> None:
    """Add one repetition's figures to ``samples`` (a defaultdict(list))."""
    for name, value in values.items():
        samples[name].append(value)
