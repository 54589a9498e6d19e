"""The receiver contract holds for both protocols: a receiver's decisions are asked for
each record whichever protocol brings it, and the same records are stored or refused.
The README's example receiver runs here as written."""
from __future__ import annotations

import logging
import re
import sys
import uuid
from pathlib import Path

import factories
import pytest
import yaml
from click.testing import CliRunner
from conftest import PASSWORD
from export_nodes import (  # noqa: F401
    EXPORT_USER,
    extra_postgres_databases,
    make_node,
    node_database,
    record_ids,
)
from protocol import BatchClient, ProtocolClient, bundle

from meteorpi_model import EventSearch, ExportConfiguration, FileSearch
from meteorpi_server import create_app
from meteorpi_server.cli import main
from meteorpi_server.exporter import configs
from meteorpi_server.exporter.tasks import Backoff
from meteorpi_server.node.demo import DemoPlan, generate
from meteorpi_server.receiver import BaseImportReceiver, DatabaseImportReceiver
from meteorpi_server.storage import store

README = Path(__file__).parents[2] / "README.rst"
NIGHT = DemoPlan(cameras=2, nights=1, events_per_night=3, files_per_event=2, standalone_files=1,
                 file_size=500)
BLOCKED_CAMERA = "demo-cam-1"


@pytest.fixture
def readme_receiver(tmp_path, monkeypatch):
    """The README's example receiver, as a user would install it (``mypkg.receivers``)."""
    block = re.search(r"\.\. code-block:: python\n\n((?:    .*\n|\n)+)", README.read_text())[1]
    package = tmp_path / "mypkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "receivers.py").write_text("\n".join(line[4:] for line in block.splitlines()))
    monkeypatch.syspath_prepend(str(tmp_path))
    yield "mypkg.receivers:FilteringReceiver"
    sys.modules.pop("mypkg.receivers", None)
    sys.modules.pop("mypkg", None)


def test_a_custom_receiver_is_still_offered_batches(settings, exporter_auth, readme_receiver):
    settings["receiver"] = readme_receiver
    app = create_app(settings)
    assert "batch-2" in app.test_client().get("/import", auth=exporter_auth).get_json()["protocols"]
    app.extensions["meteorpi"].database.dispose()


class LegacyOnlyReceiver(DatabaseImportReceiver):
    batch_protocol = False


def test_a_receiver_that_cannot_batch_says_so_and_is_offered_the_legacy_protocol_alone(
        settings, exporter_auth, caplog):
    settings["receiver"] = f"{__name__}:LegacyOnlyReceiver"
    with caplog.at_level(logging.WARNING, logger="meteorpi.server"):
        app = create_app(settings)
    assert f"{__name__}:LegacyOnlyReceiver does not take batches" in caplog.text
    client = app.test_client()
    assert client.get("/import", auth=exporter_auth).get_json()["protocols"] == ["legacy-1"]
    BatchClient(client, exporter_auth).post("plan", {"entities": []}, expect=404)
    app.extensions["meteorpi"].database.dispose()


# The README's receiver, end to end over both protocols --------------------------------------

def export_everything(node, target) -> None:
    for kind, search in (("events", EventSearch()), ("files", FileSearch())):
        configuration = ExportConfiguration(
            config_id=uuid.uuid4(), name=f"to-{target.name}-{kind}",
            target_url=target.import_url, user_id=EXPORT_USER, password=PASSWORD, search=search)
        with node.services.database.write() as session:
            configs.add(session, configuration)


def test_the_readme_receiver_refuses_the_same_records_over_both_protocols(
        make_node, readme_receiver, monkeypatch, tmp_path):
    import importlib

    monkeypatch.setattr(importlib.import_module("mypkg.receivers").FilteringReceiver, "BLOCKED",
                        {BLOCKED_CAMERA})
    source = make_node("source")
    generate(source.recorder, NIGHT)
    targets = {protocol: make_node(f"central-{protocol}", index, receiver=readme_receiver,
                                   batch_protocol=protocol == "v2").serve()
               for index, protocol in enumerate(("v2", "legacy"))}
    for target in targets.values():
        export_everything(source, target)
    config = tmp_path / "source.yaml"
    config.write_text(yaml.safe_dump(source.settings))
    result = CliRunner().invoke(main, ["--config", str(config), "export", "run", "--once"])

    with source.services.database.read() as session:
        events = [store.get_event(session, event_id) for event_id in record_ids(source)["events"]]
    blocked = [event for event in events if event.camera_id == BLOCKED_CAMERA]
    assert blocked and len(blocked) < len(events)
    # Stand-alone files are not events: the receiver takes those of every camera.
    expected = {"events": {event.event_id for event in events} - {event.event_id for event in blocked},
                "files": record_ids(source)["files"]}
    for protocol, target in targets.items():
        stored = record_ids(target)
        assert {"events": stored["events"], "files": stored["files"]} == expected, protocol
    # The refusals are reported for each target, in the receiver's words.
    for protocol in targets:
        line = next(line for line in result.output.splitlines() if f"central-{protocol}-events" in line)
        assert f"{len(blocked)} entities refused" in line, result.output
        assert "does not accept events from that camera" in line, result.output


# A receiver that decides record by record gets batches too -----------------------------------

class RefusingReceiver(DatabaseImportReceiver):
    """Refuses events of one camera before the default decides, and stand-alone files of
    that camera after it has (the default's answer is then not passed on), and statuses
    of another camera."""

    def receive_event(self, request):
        if request.entity.camera_id == "refused-cam":
            return request.failed("no events from refused-cam")
        return super().receive_event(request)

    def receive_file_record(self, request):
        reply = super().receive_file_record(request)
        if request.entity.camera_id == "refused-cam":
            return request.failed("no files from refused-cam")
        return reply

    def receive_status(self, request):
        if request.entity.camera_id == "silent-cam":
            return request.failed("no statuses from silent-cam")
        return super().receive_status(request)


class KeepNothingReceiver(BaseImportReceiver):
    """Decides per record only, and keeps a list of what it was asked about."""

    asked: list = []

    def receive_event(self, request):
        self.asked.append(request.entity_id)
        return request.complete()


@pytest.fixture
def refusing(settings, exporter_auth):
    settings["receiver"] = f"{__name__}:RefusingReceiver"
    app = create_app(settings)
    yield app
    app.extensions["meteorpi"].database.dispose()


@pytest.mark.parametrize("protocol", ["v2", "legacy"])
def test_a_refused_record_gets_its_own_answer_and_the_others_are_stored(
        refusing, exporter_auth, dataset, protocol):
    services = refusing.extensions["meteorpi"]
    good, refused = factories.status("good-cam"), factories.status("refused-cam")
    kept = dataset.add_event(good, file_count=1)
    no_event = dataset.add_event(refused, file_count=1)
    no_file = dataset.add_file(refused)
    entities = [kept, no_event, no_file]
    if protocol == "v2":
        batch = BatchClient(refusing.test_client(), exporter_auth)
        batch.statuses(good, refused)
        batch.files(bundle(dataset, *[record for entity in entities for record in entity_files(entity)]))
        states = {result["id"]: (result["state"], result.get("message"))
                  for result in batch.records(*entities)["results"]}
    else:
        node = ProtocolClient(refusing.test_client(), exporter_auth)
        states = {}
        for entity in entities:
            replies = node.replicate(entity, dataset.statuses, dataset.contents)
            states[entity.id.hex] = (replies[-1], None)
    assert states[kept.event_id.hex][0] == "complete"
    assert states[no_event.event_id.hex][0] == "failed"
    assert states[no_file.file_id.hex][0] == "failed"
    if protocol == "v2":
        assert states[no_event.event_id.hex][1] == "no events from refused-cam"
        assert states[no_file.file_id.hex][1] == "no files from refused-cam"
    with services.database.read() as session:
        assert store.has_event(session, kept.event_id)
        assert not store.has_event(session, no_event.event_id)
        assert not store.has_file_record(session, no_file.file_id), \
            "a record the receiver refused after asking the default is not stored"


@pytest.mark.parametrize("protocol", ["v2", "legacy"])
def test_a_refused_status_is_not_stored(refusing, exporter_auth, protocol):
    services = refusing.extensions["meteorpi"]
    silent, fine = factories.status("silent-cam"), factories.status("fine-cam")
    if protocol == "v2":
        results = BatchClient(refusing.test_client(), exporter_auth).statuses(silent, fine)["results"]
        assert [(result["state"], result.get("message")) for result in results] == [
            ("failed", "no statuses from silent-cam"), ("stored", None)]
    else:
        node = ProtocolClient(refusing.test_client(), exporter_auth)
        assert node.send(silent) == {"state": "failed", "message": "no statuses from silent-cam"}
        assert node.send(fine) == {"state": "continue"}
    with services.database.read() as session:
        assert not store.has_status(session, silent.status_id)
        assert store.has_status(session, fine.status_id)


def test_a_receiver_that_only_decides_per_record_is_asked_about_each_batched_record(
        settings, exporter_auth, dataset):
    settings["receiver"] = f"{__name__}:KeepNothingReceiver"
    app = create_app(settings)
    camera = factories.status("cam")
    events = [dataset.add_event(camera, file_count=0) for _ in range(3)]
    KeepNothingReceiver.asked.clear()
    batch = BatchClient(app.test_client(), exporter_auth)
    assert batch.plan(*events)["need_files"] == []
    results = batch.records(*events)["results"]
    assert [result["state"] for result in results] == ["complete"] * 3
    assert KeepNothingReceiver.asked == [event.event_id for event in events]
    app.extensions["meteorpi"].database.dispose()


def entity_files(entity):
    return entity.files if entity.ENTITY_TYPE == "event" else [entity]


# A file whose uploads keep failing -------------------------------------------------------------

def test_after_failing_once_for_bad_uploads_the_next_exchange_asks_for_the_bytes_again(
        client, exporter_auth, camera, dataset, services):
    node = ProtocolClient(client, exporter_auth)
    event = dataset.add_event(camera, file_count=1)
    record = event.files[0]
    node.send(event)
    node.send(camera)
    for _ in range(services.config.upload_attempts):
        node.upload(record.file_id, b"corrupted on the node", md5=record.md5)
    assert node.send_cached(event.event_id)["state"] == "failed"
    # The next exchange: the node mended its file, and is asked for it.
    assert node.send(event) == {"state": "need_file_data", "file_id": record.file_id.hex}
    node.upload(record.file_id, dataset.contents[record.file_id])
    assert node.send_cached(event.event_id) == {"state": "complete"}


def test_after_failing_once_for_bad_uploads_the_next_batch_asks_for_the_bytes_again(
        client, exporter_auth, camera, dataset, services):
    batch = BatchClient(client, exporter_auth)
    event = dataset.add_event(camera, file_count=1)
    record = event.files[0]
    batch.statuses(camera)
    for _ in range(services.config.upload_attempts):
        reply = batch.files(bundle(dataset, record, contents={record.file_id: b"corrupted"}))
        assert reply["results"][0]["state"] == "md5_mismatch"
    [result] = batch.records(event)["results"]
    assert result["state"] == "failed" and record.file_id.hex in result["message"]
    [result] = batch.records(event)["results"]
    assert result == {"type": "event", "id": event.event_id.hex, "state": "need_file_data",
                      "file_id": record.file_id.hex}
    assert batch.plan(event)["need_files"][0]["file_id"] == record.file_id.hex
    batch.files(bundle(dataset, record))
    assert batch.records(event)["results"][0]["state"] == "complete"


@pytest.mark.parametrize("protocol", ["v2", "legacy"])
def test_a_node_that_mends_a_corrupt_file_delivers_it_in_the_next_run(make_node, protocol):
    source = make_node("source")
    generate(source.recorder, DemoPlan(cameras=1, nights=1, events_per_night=1, files_per_event=1,
                                       standalone_files=0, file_size=500))
    target = make_node("central", 0, batch_protocol=protocol == "v2").serve()
    export_everything(source, target)
    [event_id] = record_ids(source)["events"]
    with source.services.database.read() as session:
        [record] = store.get_event(session, event_id).files
    file_id = record.file_id
    path = source.services.files.path_for(file_id)
    good = path.read_bytes()
    path.write_bytes(b"x" * len(good))  # the disk on the node went bad
    # A refused entity is due again at once, and never given up on.
    runs = [source.exporter(backoff=Backoff(0, 0), max_failures=0).run_once()
            for _ in range(target.services.config.upload_attempts)]
    assert all(run.targets["to-central-events"].refused for run in runs)
    assert event_id not in record_ids(target)["events"]
    path.write_bytes(good)  # mended
    run = source.exporter(backoff=Backoff(0, 0), max_failures=0).run_once()
    assert run.targets["to-central-events"].entities_sent == 1
    assert event_id in record_ids(target)["events"]
