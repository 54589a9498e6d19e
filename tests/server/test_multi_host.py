"""Two hosts, one database, one bucket (docs/scaling.rst): two ``meteorpi serve`` behind a
round-robin TCP balancer behave as one server to exporters, uploaders and feed readers.

Each host has its own configuration file, ``cache_dir`` and ``s3_staging_dir``; they
share one PostgreSQL database and one prefix of the session's bucket. The balancer
(tests/helpers/round_robin_proxy.py) sends each new connection to the next host, so a
client that opens a connection per request has its requests spread over both.
"""
from __future__ import annotations

import base64
import datetime
import http.client
import json
import secrets
import shutil
import threading
import time
import uuid
from contextlib import ExitStack
from dataclasses import dataclass

import factories
import pytest
import requests
import yaml
from conftest import PASSWORD, S3_TEST_BUCKET, GunicornProcess, _empty_tables, free_port
from export_nodes import EXPORT_USER, Node, wait_until
from feed_reader import server_sent_events
from protocol import chunk_checksum
from round_robin_proxy import RoundRobinProxy
from scrapes import Scrape
from sqlalchemy import create_engine, select, update
from store_queries import stored_bytes

from meteorpi_model import EventSearch, ExportConfiguration, FileSearch, md5_bytes
from meteorpi_server import create_app
from meteorpi_server.config import Config
from meteorpi_server.exporter import batch, configs, handshake
from meteorpi_server.exporter.runner import Exporter
from meteorpi_server.node.demo import DemoPlan, generate
from meteorpi_server.storage import store
from meteorpi_server.storage.db import Database
from meteorpi_server.storage.file_stores import open_file_store
from meteorpi_server.storage.orm import (
    CameraStatusRow,
    EventRow,
    FileRecordRow,
    ServerInfoRow,
    UserRoleRow,
    UserRow,
)

pytestmark = pytest.mark.slow

READER = "reader"
NIGHT = DemoPlan(cameras=2, nights=1, events_per_night=5, files_per_event=2, standalone_files=3,
                 file_size=3000, first_night=datetime.date(2026, 11, 1))
# Chunks of a resumable upload. They do not line up with the bucket's 8 MiB multipart
# parts (docs/scaling.rst), and the files below are longer than one part, so chunks taken
# by different hosts make up one part, and a part is finished by a host that took none
# of its first bytes.
CHUNK = 3 * 1024 * 1024


# The two hosts behind the balancer -------------------------------------------------------

@dataclass
class Central:
    """The two hosts, the balancer in front of them, and the bucket prefix they share."""

    hosts: list[GunicornProcess]
    proxy: RoundRobinProxy
    database_url: str
    files: object  # the shared bucket prefix, read by the test directly

    @property
    def url(self) -> str:
        return self.proxy.url

    def counts(self) -> dict[str, int]:
        database = Database(self.database_url)
        try:
            with database.read() as session:
                return store.count_rows(session)
        finally:
            database.dispose()

    def record_ids(self) -> dict[str, set[uuid.UUID]]:
        database = Database(self.database_url)
        try:
            return _record_ids(database)
        finally:
            database.dispose()


@pytest.fixture
def central(tmp_path, postgres_database, postgres_engine, s3_server, password_hash):
    """``central(**settings)``: two hosts started with the shared settings plus ``settings``,
    behind a fresh balancer; users EXPORT_USER (import) and READER (user) exist."""
    _empty_tables(postgres_engine)
    prefix = f"multi-host-{tmp_path.name}-{secrets.token_hex(4)}"
    shared = {"database_url": postgres_database,
              "file_store": f"s3://{S3_TEST_BUCKET}/{prefix}",
              "s3_endpoint_url": s3_server.endpoint_url, "log_level": "warning"}
    database = Database(postgres_database)
    with database.write() as session:
        for name, role in ((EXPORT_USER, "import"), (READER, "user")):
            session.add(UserRow(name=name, password_hash=password_hash, created_at=0,
                                roles=[UserRoleRow(role=role)]))
    database.dispose()
    stack = ExitStack()

    def start(**settings) -> Central:
        hosts = []
        for index in range(2):
            own = tmp_path / f"host{index}"
            own.mkdir()
            config_file = own / "meteorpi.yaml"
            config_file.write_text(yaml.safe_dump({
                **shared, "cache_dir": str(own / "cache"),
                "s3_staging_dir": str(own / "staging"), **settings}))
            # One worker each: what is under test is two hosts, not a host's workers.
            host = GunicornProcess(config_file, free_port(), workers=1)
            stack.callback(_kill_if_running, host)
            hosts.append(host)
        proxy = stack.enter_context(RoundRobinProxy(
            [("127.0.0.1", int(host.url.rsplit(":", 1)[1])) for host in hosts]))
        files = open_file_store(Config.from_mapping({
            **shared, "s3_staging_dir": str(tmp_path / "test-staging"),
            "cache_dir": str(tmp_path / "test-cache")}))
        return Central(hosts, proxy, postgres_database, files)

    yield start
    stack.close()


def _kill_if_running(host: GunicornProcess) -> None:
    # Cleaning up, not part of the test: no need to wait out a graceful stop.
    if host.process.poll() is None:
        host.kill()


def _record_ids(database: Database) -> dict[str, set[uuid.UUID]]:
    with database.read() as session:
        return {
            "statuses": set(session.scalars(select(CameraStatusRow.status_id))),
            "events": set(session.scalars(select(EventRow.event_id))),
            "standalone files": set(session.scalars(
                select(FileRecordRow.file_id).where(FileRecordRow.event_id.is_(None)))),
            "files": set(session.scalars(select(FileRecordRow.file_id))),
        }


# A camera node that exports to them -----------------------------------------------------

@pytest.fixture
def source(tmp_path, sqlite_template):
    """A camera node (SQLite, files on its disk) that recorded a night."""
    path = tmp_path / "node.db"
    shutil.copy(sqlite_template, path)
    engine = create_engine(f"sqlite:///{path}")
    with engine.begin() as connection:  # a copy of the template would share its server id
        connection.execute(update(ServerInfoRow).where(ServerInfoRow.name == "server_id")
                           .values(value=uuid.uuid4().hex))
    engine.dispose()
    settings = {"database_url": f"sqlite:///{path}", "file_store": str(tmp_path / "node-files"),
                "log_level": "warning"}
    node = Node("node", settings, create_app(Config.from_mapping(settings)))
    generate(node.recorder, NIGHT)
    yield node
    node.close()


def export_night(node: Node, import_url: str) -> Exporter:
    """Configure exports of every event and every stand-alone file to ``import_url``."""
    with node.services.database.write() as session:
        for name, search in (("events", EventSearch()), ("files", FileSearch())):
            configs.add(session, ExportConfiguration(
                config_id=uuid.uuid4(), name=name, target_url=import_url, user_id=EXPORT_USER,
                password=PASSWORD, search=search))
    # A busy two-core machine running two servers may answer slowly; that is no failure.
    return node.exporter(read_timeout=60.0, connect_timeout=10.0)


@pytest.fixture
def reconnecting_exporter(monkeypatch):
    """The exporter opens a connection for every request, as some camera node software
    does: through the balancer its exchanges then really do spread over both hosts (a
    kept-alive connection would keep them all on one)."""
    def closing_session():
        session = original()
        session.headers["Connection"] = "close"
        return session

    original = handshake.target_session
    monkeypatch.setattr(handshake, "target_session", closing_session)
    monkeypatch.setattr(batch, "target_session", closing_session)


def exported_everything(node: Node, summary) -> None:
    ids = _record_ids(node.services.database)
    assert summary.failures == 0
    assert summary.entities_sent == len(ids["events"]) + len(ids["standalone files"])


def assert_arrived_exactly_once(node: Node, central: Central, reader) -> None:
    """Every record of the node is stored once, and the change feed (through the balancer)
    tells of each status, event and stand-alone file once."""
    mine = _record_ids(node.services.database)
    assert central.record_ids() == mine
    with node.services.database.read() as session:
        assert central.counts() == store.count_rows(session)
    changes = read_whole_feed(central.url, reader)
    assert sorted(change["id"] for change in changes) == sorted(
        entity_id.hex for kind in ("statuses", "events", "standalone files")
        for entity_id in mine[kind])


def assert_every_file_served_by_both_hosts(node: Node, central: Central, reader) -> None:
    """Each file downloaded twice through the balancer, on a new connection each time, so
    once from each host: the bytes are the node's every time."""
    file_ids = sorted(_record_ids(node.services.database)["files"])
    before = central.proxy.connections_per_backend
    for file_id in file_ids:
        expected = stored_bytes(node.services.files, file_id)
        for _ in central.hosts:
            response = requests.get(f"{central.url}/files/content/{file_id.hex}", auth=reader,
                                    timeout=60)
            assert response.status_code == 200, response.text
            assert response.content == expected
    after = central.proxy.connections_per_backend
    assert [later - earlier for earlier, later in zip(before, after)] == [len(file_ids)] * 2


def read_whole_feed(url: str, auth) -> list[dict]:
    changes, since = [], 0
    with requests.Session() as session:
        while True:
            reply = session.get(f"{url}/changes", params={"since": since, "limit": 100},
                                auth=auth, timeout=60).json()
            changes += reply["changes"]
            since = reply["last"]
            if not reply["more"]:
                return changes


# Resumable uploads by hand (docs/uploads.rst) ------------------------------------------

def basic_auth(name: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{name}:{password}".encode()).decode()


def chunk_headers(offset: int, length: int, piece: bytes) -> dict[str, str]:
    return {"Content-Type": "application/offset+octet-stream", "Upload-Offset": str(offset),
            "Upload-Length": str(length), "Upload-Checksum": chunk_checksum(piece)}


def send_chunk(base_url: str, file_id: uuid.UUID, data: bytes, offset: int) -> requests.Response:
    """One chunk, on a connection of its own (requests' module functions open one each)."""
    piece = data[offset:offset + CHUNK]
    return requests.patch(f"{base_url}/import/data/{file_id.hex}/{md5_bytes(data)}", data=piece,
                          headers=chunk_headers(offset, len(data), piece),
                          auth=(EXPORT_USER, PASSWORD), timeout=120)


def through_balancer(request, attempts: int = 4) -> requests.Response:
    """``request()`` again while the balancer cuts the connection at once, as it does when
    the turn falls to a host that is down (no health checks): nothing reached a host, so
    sending it again is safe."""
    for attempt in range(attempts):
        try:
            return request()
        except requests.ConnectionError:
            if attempt == attempts - 1:
                raise
    raise AssertionError("unreachable")


def upload_offset(base_url: str, file_id: uuid.UUID, data: bytes) -> dict:
    response = requests.get(f"{base_url}/import/data/{file_id.hex}/{md5_bytes(data)}",
                            auth=(EXPORT_USER, PASSWORD), timeout=60)
    assert response.status_code == 200, response.text
    return response.json()


# Tests -----------------------------------------------------------------------------------

def test_a_legacy_exporter_replicates_a_night_through_both_hosts_exactly_once(
        central, source, reconnecting_exporter):
    hosts = central(batch_protocol=False)
    discovery = requests.get(f"{hosts.url}/import", auth=(EXPORT_USER, PASSWORD), timeout=60)
    assert discovery.json()["protocols"] == ["legacy-1"]
    exporter = export_night(source, f"{hosts.url}/import")

    summary = exporter.run_once()

    exported_everything(source, summary)
    assert all(count > 0 for count in hosts.proxy.connections_per_backend)
    reader = (READER, PASSWORD)
    assert_arrived_exactly_once(source, hosts, reader)
    assert_every_file_served_by_both_hosts(source, hosts, reader)


def test_a_batched_replication_through_both_hosts_loses_and_duplicates_nothing(
        central, source, reconnecting_exporter):
    hosts = central(batch_protocol=True)
    discovery = requests.get(f"{hosts.url}/import", auth=(EXPORT_USER, PASSWORD), timeout=60)
    assert "batch-2" in discovery.json()["protocols"]
    exporter = export_night(source, f"{hosts.url}/import")

    summary = exporter.run_once()

    exported_everything(source, summary)
    assert all(count > 0 for count in hosts.proxy.connections_per_backend)
    reader = (READER, PASSWORD)
    assert_arrived_exactly_once(source, hosts, reader)
    assert_every_file_served_by_both_hosts(source, hosts, reader)
    # Nothing is left for a second pass to send.
    again = source.exporter().run_once()
    assert (again.entities_sent, again.failures) == (0, 0)


def test_a_resumable_upload_whose_chunks_alternate_between_hosts_completes(central):
    hosts = central()
    data = factories.file_bytes(5 * CHUNK + 12_345, seed=3)
    file_id = uuid.uuid4()
    before = hosts.proxy.connections_per_backend

    reply = None
    for offset in range(0, len(data), CHUNK):
        reply = send_chunk(hosts.url, file_id, data, offset)
        assert reply.status_code == 200, (
            f"the chunk at byte {offset}, sent on a new connection and so to the other host "
            f"than the chunk before, was answered {reply.status_code} {reply.text}")
        assert reply.json()["offset"] == min(offset + CHUNK, len(data))

    assert reply.json()["complete"] is True
    after = hosts.proxy.connections_per_backend
    assert all(later > earlier for earlier, later in zip(before, after)), \
        "both hosts took chunks"
    assert stored_bytes(hosts.files, file_id) == data
    for host in hosts.hosts:
        assert upload_offset(host.url, file_id, data)["complete"] is True


def test_a_feed_long_poll_on_one_host_returns_with_an_import_made_through_the_other(central):
    hosts = central()
    host_a, host_b = hosts.hosts
    reader = (READER, PASSWORD)
    newest = requests.get(f"{host_a.url}/changes", auth=reader, timeout=60).json()["last"]
    replies = []
    # The long poll may wait a minute (feed_max_wait_seconds): far longer than a woken
    # poll takes, so an empty reply means it was not woken.
    poll = threading.Thread(target=lambda: replies.append(requests.get(
        f"{host_a.url}/changes", auth=reader, timeout=180,
        params={"since": newest, "timeout": 60_000})), daemon=True)
    poll.start()
    wait_until(lambda: open_feed_connections(host_a, "long_poll") >= 1,
               what="the long poll to be waiting on host A")

    status = factories.status("cam-multi-host")
    stored = import_event(host_b.url, factories.event(status, []), status)

    poll.join(180)
    assert not poll.is_alive()
    assert replies[0].status_code == 200, replies[0].text
    changes = replies[0].json()["changes"]
    assert changes, "the long poll on host A ran out its time without seeing the import"
    assert changes[0]["id"] in stored


def test_a_feed_stream_on_one_host_tells_of_an_import_made_through_the_other(central):
    # A stream that is never told ends after feed_stream_seconds, failing the test.
    hosts = central(feed_stream_seconds=120)
    host_a, host_b = hosts.hosts
    reader = (READER, PASSWORD)
    status = factories.status("cam-multi-host")
    event = factories.event(status, [])
    with requests.get(f"{host_a.url}/changes/stream", auth=reader, stream=True,
                      timeout=180) as response:
        assert response.status_code == 200, response.text
        events = server_sent_events(response)
        wait_until(lambda: open_feed_connections(host_a, "stream") >= 1,
                   what="the stream to be open on host A")

        stored = import_event(host_b.url, event, status)

        seen = set()
        for message in events:
            if message.event == "change":
                seen.add(message.json["id"])
                if seen == stored:
                    break
    assert seen == stored


def test_sigkill_of_the_host_taking_an_upload_loses_no_acknowledged_chunk(central):
    hosts = central()
    data = factories.file_bytes(4 * CHUNK + 777, seed=5)
    md5 = md5_bytes(data)
    file_id = uuid.uuid4()
    path = f"/import/data/{file_id.hex}/{md5}"
    auth = basic_auth(EXPORT_USER, PASSWORD)
    # As the exporter does: one kept-alive connection, so every chunk reaches one host.
    connection = http.client.HTTPConnection(*hosts.proxy.address, timeout=120)
    before = hosts.proxy.connections_per_backend
    acknowledged = 0
    for _ in range(2):
        piece = data[acknowledged:acknowledged + CHUNK]
        connection.request("PATCH", path, body=piece, headers={
            "Authorization": auth, **chunk_headers(acknowledged, len(data), piece)})
        reply = connection.getresponse()
        body = reply.read()
        assert reply.status == 200, body
        acknowledged = json.loads(body)["offset"]
    assert acknowledged == 2 * CHUNK
    # The connection went to whichever host's turn it was: that one is killed.
    taken = [later - earlier for earlier, later in
             zip(before, hosts.proxy.connections_per_backend)].index(1)
    victim, survivor = hosts.hosts[taken], hosts.hosts[1 - taken]

    # The next chunk is half sent when its host dies.
    piece = data[acknowledged:acknowledged + CHUNK]
    connection.putrequest("PATCH", path)
    for name, value in {"Authorization": auth, "Content-Length": str(len(piece)),
                        **chunk_headers(acknowledged, len(data), piece)}.items():
        connection.putheader(name, value)
    connection.endheaders()
    connection.send(piece[:len(piece) // 2])
    victim.kill()
    connection.close()

    state = through_balancer(lambda: upload_offset(hosts.url, file_id, data))
    assert state["offset"] >= acknowledged, (
        f"after the kill the upload is at byte {state['offset']} on the surviving host, "
        f"though {acknowledged} bytes were acknowledged before it")
    reply = finish_through_balancer(hosts, file_id, data, state["offset"], acknowledged)
    assert reply["complete"] is True
    assert stored_bytes(hosts.files, file_id) == data
    assert upload_offset(survivor.url, file_id, data)["complete"] is True


def finish_through_balancer(hosts: Central, file_id: uuid.UUID, data: bytes, offset: int,
                            floor: int) -> dict:
    """Send the rest of the upload from ``offset`` as docs/uploads.rst tells a client to,
    each chunk on a new connection; the offset the server names must never fall below
    ``floor``. Returns the last reply."""
    deadline = time.monotonic() + 180  # a bound for a broken server, never a measurement
    while True:
        assert time.monotonic() < deadline, f"the upload got no further than byte {offset}"
        reply = through_balancer(lambda: send_chunk(hosts.url, file_id, data, offset))
        body = reply.json()
        if reply.status_code == 200:
            offset = body["offset"]
            if offset == len(data):
                return body
        elif reply.status_code == 409 and body.get("error") == "upload_busy":
            # The dead host's request may hold the upload until the server lets it go.
            time.sleep(0.5)
            state = through_balancer(lambda: upload_offset(hosts.url, file_id, data))
            if state["complete"]:
                return state
            offset = state["offset"]
        elif reply.status_code == 409 and body.get("error") == "offset_mismatch":
            offset = body["offset"]
        else:
            raise AssertionError(f"the chunk at byte {offset} was answered "
                                 f"{reply.status_code} {reply.text}")
        assert offset >= floor, f"the upload fell back to byte {offset}, below {floor}"


# Helpers of the feed tests -----------------------------------------------------------------

def open_feed_connections(host: GunicornProcess, kind: str) -> float:
    """Feed requests the host is holding open now (``long_poll`` or ``stream``)."""
    response = requests.get(f"{host.url}/metrics", timeout=60)
    return Scrape(response.text).value("meteorpi_open_feed_connections", kind=kind)


def import_event(base_url: str, event, status) -> set[str]:
    """Send an event (without files) and its status through the legacy handshake, following
    the replies; returns the ids of what it stored."""
    with requests.Session() as session:
        session.auth = (EXPORT_USER, PASSWORD)

        def post(document) -> dict:
            response = session.post(f"{base_url}/import", json=document, timeout=60)
            assert response.status_code == 200, response.text
            return response.json()

        reply = post({"type": "event", "event": event.to_dict()})
        for _ in range(10):
            if reply["state"] == "complete":
                return {status.status_id.hex, event.event_id.hex}
            if reply["state"] == "need_status":
                reply = post({"type": "status", "status": status.to_dict()})
            elif reply["state"] == "continue":
                reply = post({"type": "cached_entity", "cached_entity_id": event.event_id.hex})
            else:
                reply = post({"type": "event", "event": event.to_dict()})
    raise AssertionError(f"the import did not complete: {reply}")
