"""Protocol v2: plan, bulk statuses, bulk records, per-entity results (docs/batch.rst)."""
from __future__ import annotations

import uuid

import pytest

import factories
from protocol import ResumableClient
from meteorpi_server import store


@pytest.fixture
def dataset(tmp_path):
    return factories.DataSet(tmp_path / "node")


@pytest.fixture
def camera():
    return factories.status()


class BatchClient:
    def __init__(self, client, auth):
        self.client, self.auth = client, auth

    def post(self, operation: str, document, expect: int = 200) -> dict:
        response = self.client.post(f"/import/batch/{operation}", json=document, auth=self.auth)
        assert response.status_code == expect, response.get_data(as_text=True)
        return response.get_json()

    def plan(self, *entities) -> dict:
        return self.post("plan", {"entities": [plan_entry(entity) for entity in entities]})

    def statuses(self, *statuses) -> dict:
        return self.post("statuses", {"statuses": [status.to_dict() for status in statuses]})

    def records(self, *entities) -> dict:
        return self.post("records", {"entities": [
            {"type": entity.ENTITY_TYPE, entity.ENTITY_TYPE: entity.to_dict()} for entity in entities]})


def plan_entry(entity) -> dict:
    if entity.ENTITY_TYPE == "file":
        return {"type": "file", "id": entity.file_id.hex, "status_id": entity.status_id.hex,
                "md5": entity.md5}
    return {"type": "event", "id": entity.event_id.hex, "status_id": entity.status_id.hex,
            "files": [{"file_id": record.file_id.hex, "md5": record.md5} for record in entity.files]}


@pytest.fixture
def batch(client, exporter_auth):
    return BatchClient(client, exporter_auth)


@pytest.fixture
def uploader(client, exporter_auth):
    return ResumableClient(client, exporter_auth)


def stored(services):
    with services.database.read() as session:
        return store.count_rows(session)


def test_the_server_offers_batches_and_their_limits(client, exporter_auth, services):
    reply = client.get("/import", auth=exporter_auth).get_json()
    assert "batch-2" in reply["protocols"]
    assert reply["batch"] == {"version": 2, "max_entities": services.config.batch_max_entities}


def test_a_plan_lists_what_the_server_lacks(batch, camera, dataset):
    event = dataset.add_event(camera, file_count=2)
    record = dataset.add_file(camera)
    reply = batch.plan(event, record)
    assert reply["entities"] == [
        {"type": "event", "id": event.event_id.hex, "state": "missing"},
        {"type": "file", "id": record.file_id.hex, "state": "missing"}]
    assert reply["need_statuses"] == [camera.status_id.hex]  # once, though both need it
    assert reply["need_files"] == [
        {"file_id": f.file_id.hex, "md5": f.md5, "offset": 0} for f in event.files + [record]]


def test_a_whole_batch_goes_through_in_four_kinds_of_request(batch, uploader, camera, dataset, services):
    events = [dataset.add_event(camera, file_count=3) for _ in range(5)]
    records = [dataset.add_file(camera) for _ in range(2)]
    plan = batch.plan(*events, *records)
    assert batch.statuses(camera)["results"] == [
        {"type": "status", "id": camera.status_id.hex, "state": "stored"}]
    for wanted in plan["need_files"]:
        file_id = uuid.UUID(wanted["file_id"])
        uploader.send_all(file_id, dataset.contents[file_id], 1 << 20)
    results = batch.records(*events, *records)["results"]
    assert [result["state"] for result in results] == ["complete"] * 7
    with services.database.read() as session:
        assert [store.get_event(session, event.event_id) for event in events] == events
        assert store.get_file_record(session, records[0].file_id) == records[0]


def test_a_plan_for_what_is_already_stored_needs_nothing(batch, uploader, camera, dataset):
    event = dataset.add_event(camera, file_count=1)
    batch.statuses(camera)
    uploader.send_all(event.files[0].file_id, dataset.contents[event.files[0].file_id], 1 << 20)
    batch.records(event)
    assert batch.plan(event) == {
        "entities": [{"type": "event", "id": event.event_id.hex, "state": "stored"}],
        "need_statuses": [], "need_files": []}


def test_a_plan_reports_the_offset_of_a_half_sent_file(batch, uploader, camera, dataset):
    record = dataset.add_file(camera, size=5000)
    data = dataset.contents[record.file_id]
    uploader.chunk(record.file_id, record.md5, 0, len(data), data[:2000])
    assert batch.plan(record)["need_files"] == [
        {"file_id": record.file_id.hex, "md5": record.md5, "offset": 2000}]


def test_a_record_whose_bytes_are_missing_is_not_stored_and_says_which(batch, camera, dataset, services):
    event = dataset.add_event(camera, file_count=2)
    batch.statuses(camera)
    assert batch.records(event)["results"] == [
        {"type": "event", "id": event.event_id.hex, "state": "need_file_data",
         "file_id": event.files[0].file_id.hex}]
    assert stored(services)["events"] == 0


def test_a_record_whose_status_is_missing_says_which(batch, camera, dataset):
    record = dataset.add_file(camera)
    assert batch.records(record)["results"] == [
        {"type": "file", "id": record.file_id.hex, "state": "need_status",
         "status_id": camera.status_id.hex}]


def test_one_bad_entity_does_not_fail_its_batch(batch, uploader, camera, dataset, services):
    good = dataset.add_file(camera)
    batch.statuses(camera)
    uploader.send_all(good.file_id, dataset.contents[good.file_id], 1 << 20)
    broken = {"type": "file", "file": {**good.to_dict(), "file_id": "nonsense"}}
    reply = batch.post("records", {"entities": [broken, {"type": "file", "file": good.to_dict()}]})
    invalid, complete = reply["results"]
    assert invalid["state"] == "invalid" and invalid["field"] == "entities[0].file.file_id"
    assert complete == {"type": "file", "id": good.file_id.hex, "state": "complete"}
    assert stored(services)["files"] == 1


def test_a_conflicting_record_fails_alone(batch, uploader, camera, dataset, services):
    first = dataset.add_event(camera, file_count=1)
    batch.statuses(camera)
    uploader.send_all(first.files[0].file_id, dataset.contents[first.files[0].file_id], 1 << 20)
    thief = factories.event(camera, [first.files[0]])
    other = dataset.add_event(camera, file_count=0)
    results = batch.records(first, thief, other)["results"]
    assert [result["state"] for result in results] == ["complete", "failed", "complete"]
    assert stored(services)["events"] == 2


def test_records_sent_twice_are_stored_once(batch, uploader, camera, dataset, services):
    record = dataset.add_file(camera)
    batch.statuses(camera, camera)
    uploader.send_all(record.file_id, dataset.contents[record.file_id], 1 << 20)
    assert [r["state"] for r in batch.records(record, record)["results"]] == ["complete", "complete"]
    assert [r["state"] for r in batch.records(record)["results"]] == ["complete"]
    assert stored(services) == {"statuses": 1, "events": 0, "files": 1, "blobs": 1}


@pytest.mark.parametrize("operation, document, field", [
    ("plan", [], None),
    ("plan", {"entities": "all"}, "entities"),
    ("statuses", {"statuses": {"a": 1}}, "statuses"),
    ("records", {}, "entities"),
])
def test_a_malformed_batch_is_a_400(batch, services, operation, document, field):
    reply = batch.post(operation, document, expect=400)
    assert reply["error"] in ("bad_batch", "bad_request")
    assert reply.get("field") == field
    assert set(stored(services).values()) == {0}


def test_a_batch_over_the_limit_is_refused_whole(settings, exporter_auth, camera, dataset):
    from meteorpi_server import create_app

    settings["batch_max_entities"] = 3
    app = create_app(settings)
    batch = BatchClient(app.test_client(), exporter_auth)
    events = [dataset.add_event(camera, file_count=0) for _ in range(4)]
    reply = batch.post("plan", {"entities": [plan_entry(event) for event in events]}, expect=400)
    assert "at most 3" in reply["message"]
    app.extensions["meteorpi"].database.dispose()


def test_batches_can_be_switched_off(settings, exporter_auth, camera, dataset):
    from meteorpi_server import create_app

    settings["batch_protocol"] = False
    app = create_app(settings)
    client = app.test_client()
    assert client.get("/import", auth=exporter_auth).get_json()["protocols"] == ["legacy-1"]
    assert BatchClient(client, exporter_auth).post("plan", {"entities": []}, expect=404)
    app.extensions["meteorpi"].database.dispose()


def test_a_receiver_with_its_own_rules_is_never_bypassed_by_batches(settings, exporter_auth):
    from meteorpi_server import create_app

    settings["receiver"] = "meteorpi_server.receiver:BaseImportReceiver"
    app = create_app(settings)
    assert "batch-2" not in app.test_client().get("/import", auth=exporter_auth).get_json()["protocols"]
    app.extensions["meteorpi"].database.dispose()


def test_the_file_stored_hook_runs_for_batched_records(settings, exporter_auth, camera, dataset, monkeypatch):
    from meteorpi_server import create_app
    from meteorpi_server.receiver import DatabaseImportReceiver

    seen = []
    monkeypatch.setattr(DatabaseImportReceiver, "file_stored", lambda self, record, path: seen.append(record.file_id))
    app = create_app(settings)
    client = app.test_client()
    batch, uploader = BatchClient(client, exporter_auth), ResumableClient(client, exporter_auth)
    event = dataset.add_event(camera, file_count=2)
    batch.statuses(camera)
    for record in event.files:
        uploader.send_all(record.file_id, dataset.contents[record.file_id], 1 << 20)
    batch.records(event)
    batch.records(event)
    assert seen == [record.file_id for record in event.files]
    app.extensions["meteorpi"].database.dispose()
