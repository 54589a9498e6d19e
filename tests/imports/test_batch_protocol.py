"""Protocol v2: plan, bulk statuses, bulk records, per-entity results (docs/batch.rst)."""
from __future__ import annotations

import time
import uuid

import factories
import pytest
import requests
from protocol import BatchClient, ResumableClient, bundle, plan_entry

from meteorpi_server.imports.bundles import MEDIA_TYPE as BUNDLE_MEDIA_TYPE
from meteorpi_server.storage import store
from store_queries import nothing_partial, stored_bytes


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
    assert reply["batch"] == {"version": 2, "max_entities": services.config.batch_max_entities,
                              "max_bundle_bytes": services.config.batch_max_bundle_bytes}


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


# File bundles: many small files' bytes in one request ------------------------------

def test_a_bundle_stores_many_files_in_one_request(batch, camera, dataset, services):
    event = dataset.add_event(camera, file_count=3)
    record = dataset.add_file(camera, size=0)
    reply = batch.files(bundle(dataset, *event.files, record))
    assert reply["results"] == [{"type": "file_data", "id": f.file_id.hex, "state": "stored"}
                                for f in event.files + [record]]
    for stored_file in event.files + [record]:
        assert stored_bytes(services.files, stored_file.file_id) == \
            dataset.contents[stored_file.file_id]
    batch.statuses(camera)
    assert batch.plan(event, record)["need_files"] == []
    assert [r["state"] for r in batch.records(event, record)["results"]] == ["complete"] * 2


def test_a_bundled_file_that_fails_its_md5_is_discarded_alone(batch, camera, dataset, services):
    good, bad = dataset.add_file(camera), dataset.add_file(camera)
    corrupt = bytearray(dataset.contents[bad.file_id])
    corrupt[10] ^= 0xFF
    reply = batch.files(bundle(dataset, bad, good, contents={bad.file_id: bytes(corrupt)}))
    mismatch, stored_result = reply["results"]
    assert mismatch["state"] == "md5_mismatch" and bad.md5 in mismatch["message"]
    assert stored_result["state"] == "stored"
    assert not services.files.exists(bad.file_id)
    assert services.files.exists(good.file_id)
    assert [f["file_id"] for f in batch.plan(bad, good)["need_files"]] == [bad.file_id.hex]


def test_a_bundled_file_with_a_bad_header_is_skipped_alone(batch, camera, dataset, services):
    record = dataset.add_file(camera)
    broken = b'{"file_id": "nonsense", "md5": "x", "size": 3}\nabc'
    reply = batch.files(broken + bundle(dataset, record))
    invalid, stored_result = reply["results"]
    assert invalid["state"] == "invalid" and invalid["field"] == "files[0].file_id"
    assert stored_result == {"type": "file_data", "id": record.file_id.hex, "state": "stored"}


def test_bytes_already_held_are_not_replaced_by_a_bundle(batch, uploader, camera, dataset, services):
    record = dataset.add_file(camera)
    uploader.send_all(record.file_id, dataset.contents[record.file_id], 1 << 20)
    stored_at = services.files.stat(record.file_id)  # size and modification time
    time.sleep(1.1)  # a bucket's modification times are whole seconds
    assert batch.files(bundle(dataset, record))["results"][0]["state"] == "stored"
    assert services.files.stat(record.file_id) == stored_at


@pytest.mark.parametrize("body, error", [
    (b"not json\n", "bad_bundle"),
    (b'{"file_id": "00000000000000000000000000000000"}\n', "bad_bundle"),  # no size
    (b'{"size": -1}\n', "bad_bundle"),
    (b'{"size": 3}', "bad_bundle"),  # the header never ends
    (b"{" + b" " * 2000 + b"}\n", "bad_bundle"),
    (b'{"size": 10}\nabc', "incomplete_upload"),
])
def test_a_malformed_bundle_is_a_400_that_says_why(batch, services, body, error):
    reply = batch.files(body, expect=400)
    assert reply["error"] == error and reply["message"]
    assert stored(services)["blobs"] == 0


def test_files_before_a_cut_in_a_bundle_are_kept(batch, camera, dataset, services):
    first, second = dataset.add_file(camera), dataset.add_file(camera)
    body = bundle(dataset, first, second)
    reply = batch.files(body[:-10], expect=400)
    assert reply["error"] == "incomplete_upload"
    assert services.files.exists(first.file_id) and not services.files.exists(second.file_id)
    assert [f["file_id"] for f in batch.plan(first, second)["need_files"]] == [second.file_id.hex]
    assert nothing_partial(services.files)


def test_a_bundle_needs_its_media_type_a_length_and_the_limit(settings, exporter_auth, camera, dataset):
    from meteorpi_server import create_app

    settings["batch_max_bundle_bytes"] = 4096
    app = create_app(settings)
    batch = BatchClient(app.test_client(), exporter_auth)
    small, large = dataset.add_file(camera, size=100), dataset.add_file(camera, size=5000)
    assert batch.files(bundle(dataset, small), expect=415,
                       content_type="application/octet-stream")["error"] == "unsupported_media_type"
    assert batch.files(bundle(dataset, large), expect=413)["limit"] == 4096
    app.extensions["meteorpi"].database.dispose()


def test_a_bundle_sent_without_a_length_is_a_411(live_server, exporter_auth, camera, dataset):
    record = dataset.add_file(camera)
    response = requests.post(f"{live_server}/import/batch/files", auth=exporter_auth,
                             data=iter([bundle(dataset, record)]),  # chunked: no length
                             headers={"Content-Type": BUNDLE_MEDIA_TYPE}, timeout=30)
    assert response.status_code == 411
    assert response.json()["error"] == "length_required"


def test_a_bundle_over_the_entity_limit_is_refused(settings, exporter_auth, camera, dataset, services):
    from meteorpi_server import create_app

    settings["batch_max_entities"] = 2
    app = create_app(settings)
    batch = BatchClient(app.test_client(), exporter_auth)
    records = [dataset.add_file(camera, size=10) for _ in range(3)]
    assert "at most 2" in batch.files(bundle(dataset, *records), expect=400)["message"]
    app.extensions["meteorpi"].database.dispose()


def test_a_status_stored_by_another_exporter_meanwhile_is_stored_once(batch, camera, services,
                                                                      monkeypatch):
    batch.statuses(camera)
    # Another exporter's transaction stored it after this request looked for it.
    monkeypatch.setattr(store, "missing_statuses", lambda session, ids: list(ids))
    assert batch.statuses(camera)["results"] == [
        {"type": "status", "id": camera.status_id.hex, "state": "stored"}]
    monkeypatch.undo()
    assert stored(services)["statuses"] == 1


@pytest.mark.parametrize("operation", ["plan", "records"])
@pytest.mark.parametrize("bad_type", [["event"], {"event": 1}, 7, None])
def test_an_entity_whose_type_is_not_a_name_is_invalid_alone(batch, camera, dataset, services,
                                                             operation, bad_type):
    event = dataset.add_event(camera, file_count=0)
    batch.statuses(camera)
    good = (plan_entry(event) if operation == "plan"
            else {"type": "event", "event": event.to_dict()})
    reply = batch.post(operation, {"entities": [good, {"type": bad_type, "id": event.event_id.hex}]})
    results = reply["entities"] if operation == "plan" else reply["results"]
    assert [result["state"] for result in results] == [
        "missing" if operation == "plan" else "complete", "invalid"]
    assert results[1]["field"] == "entities[1].type"


def test_results_come_in_the_order_of_the_request(batch, camera, dataset):
    event = dataset.add_event(camera, file_count=0)
    plan = batch.post("plan", {"entities": [plan_entry(event), {"type": "event"}]})
    assert [result["state"] for result in plan["entities"]] == ["missing", "invalid"]
    other = factories.status(camera_id="cam-2")
    statuses = batch.post("statuses", {"statuses": [camera.to_dict(), {"camera_id": "x"},
                                                    other.to_dict()]})
    assert [(result["id"], result["state"]) for result in statuses["results"]] == [
        (camera.status_id.hex, "stored"), ("", "invalid"), (other.status_id.hex, "stored")]


def test_a_plan_asks_for_the_status_a_file_was_made_under(batch, camera, dataset):
    later = factories.status(valid_from=factories.NIGHT + 500)
    event = dataset.add_event(camera, file_count=1)
    entry = plan_entry(event)
    entry["files"][0]["status_id"] = later.status_id.hex
    batch.statuses(camera)
    assert batch.post("plan", {"entities": [entry]})["need_statuses"] == [later.status_id.hex]


@pytest.mark.slow
def test_exporters_sending_the_same_records_in_opposite_orders_never_fail(
        live_server, exporter_auth, camera, dataset, services):
    """On PostgreSQL, rows inserted in request order made such batches deadlock (a 500)."""
    import concurrent.futures

    statuses = [factories.status(camera_id=f"cam-{index}") for index in range(30)]
    events = [dataset.add_event(status, file_count=0) for status in statuses]

    def post(operation, document):
        response = requests.post(f"{live_server}/import/batch/{operation}", json=document,
                                 auth=exporter_auth, timeout=60)
        return response.status_code

    for round_ in range(3):
        ordered = statuses[round_ * 10:(round_ + 1) * 10]
        documents = [{"statuses": [status.to_dict() for status in order]}
                     for order in (ordered, ordered[::-1])]
        with concurrent.futures.ThreadPoolExecutor(2) as pool:
            assert list(pool.map(post, ["statuses"] * 2, documents)) == [200, 200]
        mine = [event for event in events if event.status_id in {s.status_id for s in ordered}]
        documents = [{"entities": [{"type": "event", "event": event.to_dict()} for event in order]}
                     for order in (mine, mine[::-1])]
        with concurrent.futures.ThreadPoolExecutor(2) as pool:
            assert list(pool.map(post, ["records"] * 2, documents)) == [200, 200]
    assert stored(services)["events"] == 30 and stored(services)["statuses"] == 30
