"""GET /health (liveness) and GET /health/ready (readiness): each check fails for its own
cause, with a reason that names it, and the routes need no credentials."""
from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import threading
from pathlib import Path

import pytest
import requests
from alembic import command
from conftest import free_port

from meteorpi_server import create_app
from meteorpi_server.config import Config
from meteorpi_server.observe import health
from meteorpi_server.storage.db import Database


def checks(body: dict) -> dict[str, dict]:
    return {check["name"]: check for check in body["checks"]}


def failing(body: dict) -> set[str]:
    return {check["name"] for check in body["checks"] if not check["ok"]}


def test_a_fresh_server_is_ready_without_credentials(client, settings):
    response = client.get("/health/ready")
    assert response.status_code == 200, response.get_json()
    body = response.get_json()
    assert body["status"] == "ok"
    assert [check["name"] for check in body["checks"]] == [
        "database", "schema", "file_store", "disk_space"]
    assert all(check["ok"] and check["reason"] for check in body["checks"])
    assert checks(body)["schema"]["reason"] == f"at revision {health.head_revision()}, the newest"
    space = checks(body)["disk_space"]
    assert space["free_bytes"] > 0 and space["min_free_bytes"] == Config.from_mapping(
        settings).min_free_bytes
    assert response.headers["Cache-Control"] == "no-store"
    # The probe leaves nothing behind in the store.
    assert list((Path(settings["file_store"]) / ".uploads").iterdir()) == []


def test_liveness_answers_without_credentials_or_a_database(tmp_path):
    app = create_app(Config.from_mapping({
        "database_url": f"postgresql+psycopg://postgres@127.0.0.1:{free_port()}/nowhere",
        "file_store": str(tmp_path / "files")}))
    try:
        response = app.test_client().get("/health")
        assert response.status_code == 200
        assert response.get_json() == {"status": "ok"}
        assert response.headers["Cache-Control"] == "no-store"
    finally:
        app.extensions["meteorpi"].database.dispose()


def test_ready_fails_naming_the_database_when_it_cannot_be_reached(tmp_path):
    port = free_port()  # nothing listens there
    app = create_app(Config.from_mapping({
        "database_url": f"postgresql+psycopg://postgres@127.0.0.1:{port}/nowhere",
        "file_store": str(tmp_path / "files")}))
    try:
        response = app.test_client().get("/health/ready")
    finally:
        app.extensions["meteorpi"].database.dispose()
    assert response.status_code == 503
    body = response.get_json()
    assert body["status"] == "failing"
    assert failing(body) == {"database", "schema"}  # the schema cannot be read either
    reason = checks(body)["database"]["reason"]
    assert f"127.0.0.1:{port}/nowhere could not be queried: " in reason
    assert "refused" in reason.lower()
    assert checks(body)["schema"]["reason"] == "not checked: the database did not answer"
    assert checks(body)["file_store"]["ok"] and checks(body)["disk_space"]["ok"]


@contextlib.contextmanager
def silent_server():
    """A TCP server that accepts connections and never says a word (a hung database)."""
    listener = socket.create_server(("127.0.0.1", 0))
    accepted: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        listener.settimeout(0.1)
        while not stop.is_set():
            with contextlib.suppress(OSError):
                accepted.append(listener.accept()[0])

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield listener.getsockname()[1]
    finally:
        stop.set()
        thread.join(5)
        for connection in accepted:
            connection.close()
        listener.close()


def test_a_hung_database_fails_the_probe_instead_of_hanging_it(tmp_path):
    with silent_server() as port:
        app = create_app(Config.from_mapping({
            "database_url": f"postgresql+psycopg://postgres@127.0.0.1:{port}/hung",
            "file_store": str(tmp_path / "files")}))
        services = app.extensions["meteorpi"]
        results = []

        def probe() -> None:
            results.append(health.readiness(services, database_timeout=0.5))

        # Two probes, one after the other, each on a thread the test can give up on.
        for _ in range(2):
            thread = threading.Thread(target=probe, daemon=True)
            thread.start()
            thread.join(60)
            assert not thread.is_alive(), "the readiness probe hung on a silent database"
        first, second = results
        assert not first.ok and not first.check("database").ok
        assert "did not answer a query within 0.5 s" in first.check("database").reason
        # The first query still waits: the second probe does not start another.
        assert "an earlier check is still waiting" in second.check("database").reason
        assert first.check("file_store").ok and second.check("file_store").ok
    services.database.dispose()


def test_ready_fails_naming_the_schema_when_one_migration_behind(app, client, services):
    head = health.head_revision()
    database = services.database
    with database.engine.connect() as connection:
        command.downgrade(database._alembic_config(connection), "-1")
        connection.commit()
    try:
        previous = database.current_revision()
        assert previous is not None and previous != head
        response = client.get("/health/ready")
        assert response.status_code == 503
        body = response.get_json()
        assert failing(body) == {"schema"}
        reason = checks(body)["schema"]["reason"]
        assert f"is at revision {previous}, the code needs {head}" in reason
        assert "meteorpi db upgrade" in reason
    finally:
        database.upgrade()  # the PostgreSQL database is the session's: leave it as found
    assert client.get("/health/ready").status_code == 200


def test_ready_fails_naming_the_disk_space_below_min_free_bytes(settings):
    settings["min_free_bytes"] = 2 ** 62  # more than any disk here
    app = create_app(Config.from_mapping(settings))
    try:
        response = app.test_client().get("/health/ready")
    finally:
        app.extensions["meteorpi"].database.dispose()
    assert response.status_code == 503
    body = response.get_json()
    assert failing(body) == {"disk_space"}
    space = checks(body)["disk_space"]
    assert space["min_free_bytes"] == 2 ** 62 and 0 < space["free_bytes"] < 2 ** 62
    assert "below min_free_bytes" in space["reason"] and "free space on it" in space["reason"]


@contextlib.contextmanager
def read_only(directory: Path):
    """Make ``directory`` truly read-only: root ignores permission bits, so as root it is
    bind-mounted read-only onto itself; otherwise its bits are taken away."""
    if os.geteuid() == 0:
        subprocess.run(["mount", "--bind", str(directory), str(directory)], check=True)
        try:
            subprocess.run(["mount", "-o", "remount,ro,bind", str(directory)], check=True)
            yield "read-only"
        finally:
            subprocess.run(["umount", str(directory)], check=True)
    else:
        modes = {path: path.stat().st_mode for path in (directory, directory / ".uploads")}
        for path in modes:
            path.chmod(0o555)
        try:
            yield "not writable by this server"
        finally:
            for path, mode in modes.items():
                path.chmod(mode)


def test_ready_fails_naming_a_read_only_file_store_until_it_is_writable(settings, live_server):
    store = Path(settings["file_store"])
    ready = f"{live_server}/health/ready"
    assert requests.get(ready, timeout=30).status_code == 200  # makes the store's .uploads
    with read_only(store) as words:
        # A write there really fails now (permission bits alone would not stop root).
        with pytest.raises(OSError):
            (store / ".uploads" / "probe").write_bytes(b"x")
        response = requests.get(ready, timeout=30)
        assert response.status_code == 503
        body = response.json()
        assert failing(body) == {"file_store"}
        reason = checks(body)["file_store"]["reason"]
        assert reason.startswith(f"the file store {store} is {words}: ")
        assert response.headers["Cache-Control"] == "no-store"
    response = requests.get(ready, timeout=30)
    assert response.status_code == 200, response.json()
    assert list((store / ".uploads").iterdir()) == []


def test_ready_creates_a_missing_file_store_as_the_first_upload_would(settings, client):
    store = Path(settings["file_store"])
    assert not store.exists()
    assert client.get("/health/ready").status_code == 200
    assert (store / ".uploads").is_dir()


def test_ready_fails_when_the_file_store_is_not_a_directory(settings):
    Path(settings["file_store"]).write_text("not a directory")
    app = create_app(Config.from_mapping(settings))
    try:
        body = app.test_client().get("/health/ready").get_json()
    finally:
        app.extensions["meteorpi"].database.dispose()
    assert failing(body) == {"file_store"}
    assert checks(body)["file_store"]["reason"].startswith(
        f"the file store {settings['file_store']} is not writable: ")


def test_the_newest_revision_is_read_once_per_process():
    health.head_revision.cache_clear()
    assert health.head_revision() == health.head_revision()
    assert health.head_revision.cache_info().misses == 1
    database = Database("sqlite://")
    try:
        assert health.head_revision() == database.head_revision()
    finally:
        database.dispose()
