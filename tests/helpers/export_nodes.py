"""Several meteorpi servers in one test: each with its own database and file store,
serving on a real socket, plus targets that misbehave on purpose.

Import the fixtures into a test module (``from export_nodes import make_node, ...``).
"""
from __future__ import annotations

import secrets
import shutil
import socket
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Callable

import pytest
from conftest import PASSWORD
from sqlalchemy import create_engine, select, text, update
from sqlalchemy.engine import make_url
from werkzeug.serving import make_server
from werkzeug.wrappers import Request, Response

from meteorpi_model import EventSearch, ExportConfiguration
from meteorpi_server import create_app
from meteorpi_server.config import Config
from meteorpi_server.exporter import configs, report
from meteorpi_server.exporter.runner import Exporter, ExporterSettings
from meteorpi_server.exporter.tasks import Backoff
from meteorpi_server.node.recording import Recorder
from meteorpi_server.storage import store
from meteorpi_server.storage.db import Database
from meteorpi_server.storage.orm import (
    Base,
    CameraStatusRow,
    EventRow,
    FileRecordRow,
    ServerInfoRow,
    UserRoleRow,
    UserRow,
)

EXPORT_USER = "exporter"
EXTRA_DATABASES = 3


# Databases -----------------------------------------------------------------------------

@pytest.fixture(scope="session")
def extra_postgres_databases(postgres_database):
    """More migrated PostgreSQL databases (each its own server id), dropped at the end."""
    admin_url = make_url(postgres_database).set(database="postgres")
    admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    base = make_url(postgres_database).database
    token = secrets.token_hex(2)
    urls = []
    try:
        for index in range(EXTRA_DATABASES):
            # Each test module that imports this fixture gets its own instance: hence the token.
            name = f"{base}_{token}_node{index}"
            with admin.connect() as connection:
                connection.execute(text(f'CREATE DATABASE "{name}"'))
            url = make_url(postgres_database).set(database=name).render_as_string(hide_password=False)
            urls.append(url)
            database = Database(url)
            database.upgrade()
            database.dispose()
        yield urls
    finally:
        with admin.connect() as connection:
            for url in urls:
                connection.execute(text(f'DROP DATABASE IF EXISTS "{make_url(url).database}" WITH (FORCE)'))
        admin.dispose()


def _empty(url: str) -> None:
    engine = create_engine(url)
    with engine.begin() as connection:
        names = ", ".join(f'"{table.name}"' for table in Base.metadata.sorted_tables
                          if table.name != "server_info")
        connection.execute(text(f"TRUNCATE {names} CASCADE"))
    engine.dispose()


@pytest.fixture
def node_database(request, database_url, tmp_path):
    """``node_database(i)``: the i-th extra empty database, of the same kind as
    ``database_url``, with a server id of its own."""

    def make(index: int) -> str:
        if database_url.startswith("sqlite"):
            path = tmp_path / f"node{index}.db"
            shutil.copy(request.getfixturevalue("sqlite_template"), path)
            url = f"sqlite:///{path}"
            # A copy of the template would share its server id; a node needs its own.
            engine = create_engine(url)
            with engine.begin() as connection:
                connection.execute(update(ServerInfoRow).where(ServerInfoRow.name == "server_id")
                                   .values(value=uuid.uuid4().hex))
            engine.dispose()
            return url
        url = request.getfixturevalue("extra_postgres_databases")[index]
        _empty(url)
        return url

    return make


# Nodes ---------------------------------------------------------------------------------

class _ThreadedServer:
    """A WSGI app on a real loopback socket, served by threads (over TLS with ``ssl_context``)."""

    def __init__(self, app, port: int = 0, ssl_context=None):
        self.server = make_server("127.0.0.1", port, app, threaded=True, ssl_context=ssl_context)
        self.port = self.server.server_port
        self.url = f"{'https' if ssl_context else 'http'}://127.0.0.1:{self.port}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)


@dataclass
class Node:
    """One meteorpi server: its settings, app and services, and its URL when serving."""

    name: str
    settings: dict
    app: object
    wsgi: Callable | None = None
    server: _ThreadedServer | None = None
    port: int = 0
    scheme: str = "http"
    _extra: list = field(default_factory=list)

    @property
    def services(self):
        return self.app.extensions["meteorpi"]

    @property
    def url(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.port}"

    @property
    def import_url(self) -> str:
        return f"{self.url}/import"

    @property
    def recorder(self) -> Recorder:
        return Recorder(self.services.database, self.services.files)

    @property
    def server_id(self) -> uuid.UUID:
        return self.services.server_id

    def serve(self, wrap: Callable | None = None, ssl_context=None) -> Node:
        """Serve (again, on the same port if it served before); ``wrap`` wraps the app;
        with an ``ssl.SSLContext``, over HTTPS."""
        self.wsgi = wrap(self.app) if wrap else self.app
        self.server = _ThreadedServer(self.wsgi, self.port, ssl_context)
        self.port = self.server.port
        self.scheme = "https" if ssl_context else "http"
        return self

    def stop_serving(self) -> None:
        if self.server is not None:
            self.server.stop()
            self.server = None

    def exporter(self, **changes) -> Exporter:
        return Exporter(self.services.database, self.services.files, fast_settings(**changes))

    def counts(self) -> dict:
        with self.services.database.read() as session:
            return store.count_rows(session)

    def close(self) -> None:
        self.stop_serving()
        self.services.database.dispose()


def fast_settings(**changes) -> ExporterSettings:
    """Settings for tests: short time-outs, back-off in milliseconds."""
    values = dict(interval_seconds=0.05, max_failures=4, backoff=Backoff(20, 200),
                  connect_timeout=2.0, read_timeout=5.0, upload_retry_seconds=0.05)
    values.update(changes)
    return ExporterSettings(**values)


@pytest.fixture
def make_node(node_database, database_url, tmp_path, password_hash):
    """``make_node(name, index)``: a server with the i-th extra database (index None: the
    test's own ``database_url``) and its own file store, with an ``import`` user named
    EXPORT_USER whose password is conftest's PASSWORD."""
    nodes = []

    def make(name: str, index: int | None = None, **settings) -> Node:
        url = database_url if index is None else node_database(index)
        values = {"database_url": url, "file_store": str(tmp_path / name / "files"),
                  "log_level": "debug", **settings}
        node = Node(name, values, create_app(Config.from_mapping(values)))
        with node.services.database.write() as session:
            if session.get(UserRow, EXPORT_USER) is None:
                session.add(UserRow(name=EXPORT_USER, password_hash=password_hash, created_at=0,
                                    roles=[UserRoleRow(role="import")]))
        nodes.append(node)
        return node

    yield make
    for node in nodes:
        node.close()


# Exporting ---------------------------------------------------------------------------------

def add_export(node: Node, import_url: str, name: str = "central") -> None:
    """Export every event of ``node`` to ``import_url`` as EXPORT_USER."""
    configuration = ExportConfiguration(config_id=uuid.uuid4(), name=name, target_url=import_url,
                                        user_id=EXPORT_USER, password=PASSWORD, search=EventSearch())
    with node.services.database.write() as session:
        configs.add(session, configuration)


def status_of(node: Node, name: str = "central") -> report.ConfigStatus:
    """What ``meteorpi export status`` reports for the configuration ``name``."""
    with node.services.database.read() as session:
        return report.gather(session, name)[0]


# Comparing nodes -------------------------------------------------------------------------

def record_ids(node: Node) -> dict[str, set[uuid.UUID]]:
    with node.services.database.read() as session:
        return {
            "statuses": set(session.scalars(select(CameraStatusRow.status_id))),
            "events": set(session.scalars(select(EventRow.event_id))),
            "files": set(session.scalars(select(FileRecordRow.file_id)
                                         .where(FileRecordRow.event_id.is_(None)))),
        }


def assert_same_records(source: Node, target: Node) -> None:
    """Every record of ``source`` is on ``target``, equal, with the same bytes."""
    ids = record_ids(source)
    assert record_ids(target) == ids
    with source.services.database.read() as mine, target.services.database.read() as theirs:
        for status_id in ids["statuses"]:
            assert store.get_status(theirs, status_id) == store.get_status(mine, status_id)
        file_records = []
        for event_id in ids["events"]:
            event = store.get_event(mine, event_id)
            assert store.get_event(theirs, event_id) == event
            file_records += event.files
        for file_id in ids["files"]:
            record = store.get_file_record(mine, file_id)
            assert store.get_file_record(theirs, file_id) == record
            file_records.append(record)
    for record in file_records:
        assert (target.services.files.path_for(record.file_id).read_bytes()
                == source.services.files.path_for(record.file_id).read_bytes())


# Watching and breaking targets -------------------------------------------------------------

class ImportLog:
    """WSGI middleware that notes each /import request and its reply state, and the kind
    of each protocol v2 request (``plan``, ``statuses``, ``files``, ``records``).

    ``hold_after`` completes: the next request for a new entity waits on ``gate`` (so a
    test can kill the exporter while a request is in flight, at a known point).
    """

    def __init__(self, app, hold_after: int | None = None):
        self.app = app
        self.entries: list[tuple[str, str | None, str | None]] = []
        self.hold_after = hold_after
        self.gate = threading.Event()
        self.holding = threading.Event()
        self._lock = threading.Lock()

    def __call__(self, environ, start_response):
        request = Request(environ)
        if request.method == "POST" and request.path.startswith("/import/batch/"):
            with self._lock:  # protocol v2: note which request, not its entities
                self.entries.append((request.path.rsplit("/", 1)[1], None, None))
            return self.app(environ, start_response)
        if request.method != "POST" or request.path != "/import":
            return self.app(environ, start_response)
        body = request.get_data(cache=True)
        document = _json(body)
        kind = document.get("type") if isinstance(document, dict) else None
        entity_id = _entity_id(document)
        if self.hold_after is not None and kind in ("event", "file"):
            with self._lock:
                held = self.complete_count() >= self.hold_after
            if held:
                self.holding.set()
                self.gate.wait(60)
        environ["wsgi.input"] = _Replay(body)
        environ["CONTENT_LENGTH"] = str(len(body))
        response = Response.from_app(self.app, environ)
        reply = _json(response.get_data())
        state = reply.get("state") if isinstance(reply, dict) else None
        with self._lock:
            self.entries.append((kind, entity_id, state))
        return response(environ, start_response)

    def complete_count(self) -> int:
        return sum(1 for _, _, state in self.entries if state == "complete")

    def completions(self) -> dict[str, int]:
        """How often each entity was answered ``complete``."""
        counts: dict[str, int] = {}
        for kind, entity_id, state in self.entries:
            if state == "complete" and entity_id is not None:
                counts[entity_id] = counts.get(entity_id, 0) + 1
        return counts

    def full_sends(self) -> int:
        return sum(1 for kind, _, _ in self.entries if kind in ("event", "file"))


class _Replay:
    def __init__(self, body: bytes):
        import io

        self._stream = io.BytesIO(body)

    def read(self, *args):
        return self._stream.read(*args)

    def readline(self, *args):
        return self._stream.readline(*args)


def _json(body: bytes):
    import json

    try:
        return json.loads(body)
    except ValueError:
        return None


def _entity_id(document) -> str | None:
    if not isinstance(document, dict):
        return None
    kind = document.get("type")
    if kind == "cached_entity":
        return document.get("cached_entity_id")
    entity = document.get(kind) if isinstance(kind, str) else None
    if isinstance(entity, dict):
        return entity.get({"event": "event_id", "file": "file_id", "status": "status_id"}.get(kind))
    return None


class FaultyTarget:
    """A server on a loopback socket that misbehaves in one way, on every request:

    ``garbage`` (200 with a body that is not JSON), ``error`` (500), ``slow`` (answers
    after ``delay`` seconds), ``close`` (accepts the connection and closes it at once).
    """

    def __init__(self, mode: str, delay: float = 3.0):
        self.mode, self.delay = mode, delay
        self.requests = 0
        self._stop = threading.Event()
        if mode == "close":
            self._socket = socket.create_server(("127.0.0.1", 0))
            self._socket.settimeout(0.1)
            self.port = self._socket.getsockname()[1]
            self._thread = threading.Thread(target=self._close_connections, daemon=True)
            self._thread.start()
            self._server = None
        else:
            self._server = _ThreadedServer(self._app)
            self.port = self._server.port
        self.url = f"http://127.0.0.1:{self.port}"
        self.import_url = f"{self.url}/import"

    def _app(self, environ, start_response):
        self.requests += 1
        Request(environ).get_data()
        if self.mode == "garbage":
            start_response("200 OK", [("Content-Type", "text/html")])
            return [b"<html><body>Welcome to nginx!</body></html>"]
        if self.mode == "error":
            start_response("500 Internal Server Error", [("Content-Type", "text/plain")])
            return [b"database is on fire"]
        if self.mode == "slow":
            self._stop.wait(self.delay)
            start_response("200 OK", [("Content-Type", "application/json")])
            return [b'{"state": "complete"}']
        raise ValueError(f"unknown mode {self.mode}")

    def _close_connections(self) -> None:
        while not self._stop.is_set():
            try:
                connection, _ = self._socket.accept()
            except (socket.timeout, OSError):
                continue
            self.requests += 1
            connection.close()

    def stop(self) -> None:
        self._stop.set()
        if self._server is not None:
            self._server.stop()
        else:
            self._socket.close()
            self._thread.join(5)


@pytest.fixture
def faulty_target():
    started = []

    def start(mode: str, **options) -> FaultyTarget:
        target = FaultyTarget(mode, **options)
        started.append(target)
        return target

    yield start
    for target in started:
        target.stop()


def wait_until(condition: Callable[[], bool], seconds: float = 60, what: str = "condition") -> None:
    """Poll ``condition`` until true; fail the test (not hang) after ``seconds``."""
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {seconds:.0f} s waiting for {what}")
        time.sleep(0.02)


__all__ = ["EXPORT_USER", "ImportLog", "FaultyTarget", "Node", "assert_same_records",
           "extra_postgres_databases", "fast_settings", "faulty_target", "make_node",
           "node_database", "record_ids", "wait_until"]
