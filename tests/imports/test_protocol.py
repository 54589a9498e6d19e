"""The /import handshake, reply by reply, as docs/protocol.rst describes it."""
from __future__ import annotations

import uuid

import factories
import pytest
from protocol import ProtocolClient
from sqlalchemy import update

from meteorpi_model import md5_bytes
from meteorpi_server.storage import store
from meteorpi_server.storage.orm import StoredBlobRow
from store_queries import nothing_in_store, stored_bytes


@pytest.fixture
def node(client, exporter_auth):
    return ProtocolClient(client, exporter_auth)


def stored(services):
    with services.database.read() as session:
        return store.count_rows(session)


def test_an_event_with_an_unknown_status_asks_for_that_status(node, camera, dataset):
    event = dataset.add_event(camera, file_count=1)
    assert node.send(event) == {"state": "need_status", "status_id": camera.status_id.hex}


def test_a_status_is_stored_and_answered_continue(node, camera, services):
    assert node.send(camera) == {"state": "continue"}
    with services.database.read() as session:
        assert store.get_status(session, camera.status_id) == camera


def test_a_status_sent_twice_is_stored_once(node, camera, services):
    assert node.send(camera) == {"state": "continue"}
    assert node.send(camera) == {"state": "continue"}
    assert stored(services)["statuses"] == 1


def test_once_the_status_is_known_the_first_missing_file_is_asked_for(node, camera, dataset):
    event = dataset.add_event(camera, file_count=2)
    node.send(event)
    node.send(camera)
    assert node.send_cached(event.event_id) == {
        "state": "need_file_data", "file_id": event.files[0].file_id.hex}


def test_an_upload_is_answered_continue(node, camera, dataset):
    event = dataset.add_event(camera, file_count=1)
    record = event.files[0]
    assert node.upload(record.file_id, dataset.contents[record.file_id]) == {"state": "continue"}


def test_an_event_with_two_files_follows_the_full_handshake(node, camera, dataset, services):
    event = dataset.add_event(camera, file_count=2)
    states = node.replicate(event, dataset.statuses, dataset.contents)
    assert states == ["need_status", "continue", "need_file_data", "continue",
                      "need_file_data", "continue", "complete"]
    with services.database.read() as session:
        assert store.get_event(session, event.event_id) == event


def test_a_stored_event_keeps_its_files_bytes_and_who_sent_it(node, camera, dataset, services):
    event = dataset.add_event(camera, file_count=3)
    node.replicate(event, dataset.statuses, dataset.contents)
    for record in event.files:
        assert stored_bytes(services.files, record.file_id) == dataset.contents[record.file_id]
    with services.database.read() as session:
        from meteorpi_server.storage.orm import EventRow
        row = session.get(EventRow, event.event_id)
        assert row.imported_by == "node1"
        assert row.received_at > 0
        assert [file.file_id for file in row.files] == [record.file_id for record in event.files]


def test_an_event_without_files_needs_only_its_status(node, camera, dataset):
    event = dataset.add_event(camera, file_count=0)
    assert node.replicate(event, dataset.statuses, dataset.contents) == [
        "need_status", "continue", "complete"]


def test_a_standalone_file_follows_the_same_handshake(node, camera, dataset, services):
    record = dataset.add_file(camera)
    states = node.replicate(record, dataset.statuses, dataset.contents)
    assert states == ["need_status", "continue", "need_file_data", "continue", "complete"]
    with services.database.read() as session:
        assert store.get_file_record(session, record.file_id) == record


def test_an_event_already_stored_is_complete_at_once_and_stored_once(node, camera, dataset, services):
    event = dataset.add_event(camera, file_count=1)
    node.replicate(event, dataset.statuses, dataset.contents)
    assert node.send(event) == {"state": "complete"}
    assert stored(services) == {"statuses": 1, "events": 1, "files": 1, "blobs": 1}


def test_a_cached_entity_the_server_does_not_hold_asks_for_the_full_entity(node):
    assert node.send_cached(uuid.uuid4()) == {"state": "continue-nocache"}


def test_after_continue_nocache_the_full_entity_resumes_the_handshake(node, camera, dataset):
    event = dataset.add_event(camera, file_count=0)
    node.send(camera)
    assert node.send_cached(event.event_id) == {"state": "continue-nocache"}
    assert node.send(event) == {"state": "complete"}


def test_the_cache_is_per_exporter(client, make_user, camera, dataset):
    first = ProtocolClient(client, make_user("node1", "import"))
    second = ProtocolClient(client, make_user("node2", "import"))
    event = dataset.add_event(camera, file_count=0)
    first.send(event)
    assert second.send_cached(event.event_id) == {"state": "continue-nocache"}
    assert first.send_cached(event.event_id)["state"] == "need_status"


@pytest.mark.parametrize("cache_size", [2])
def test_the_cache_forgets_the_least_recently_used_entity(settings, cache_size, camera, dataset,
                                                          exporter_auth):
    from meteorpi_server import create_app

    settings["import_cache_size"] = cache_size
    app = create_app(settings)
    node = ProtocolClient(app.test_client(), exporter_auth)
    first, second, third = (dataset.add_event(camera, file_count=0) for _ in range(3))
    for event in (first, second):
        node.send(event)
    node.send_cached(first.event_id)  # a hit refreshes 'first'...
    node.send(third)                  # ...so adding a third evicts 'second'
    assert node.send_cached(first.event_id)["state"] == "need_status"
    assert node.send_cached(second.event_id) == {"state": "continue-nocache"}
    app.extensions["meteorpi"].database.dispose()


def test_bytes_that_do_not_match_their_md5_are_discarded(node, camera, dataset, services):
    event = dataset.add_event(camera, file_count=1)
    record = event.files[0]
    node.send(event)
    node.send(camera)
    assert node.upload(record.file_id, b"corrupted", md5=record.md5) == {"state": "continue"}
    assert nothing_in_store(services.files)
    assert node.send_cached(event.event_id) == {
        "state": "need_file_data", "file_id": record.file_id.hex}


def test_a_file_that_keeps_failing_its_md5_check_fails_the_import(node, camera, dataset, services):
    event = dataset.add_event(camera, file_count=1)
    record = event.files[0]
    node.send(event)
    node.send(camera)
    for _ in range(services.config.upload_attempts):
        node.upload(record.file_id, b"corrupted", md5=record.md5)
    reply = node.send_cached(event.event_id)
    assert reply["state"] == "failed"
    assert record.file_id.hex in reply["message"] and "md5" in reply["message"]
    assert stored(services)["events"] == 0


def test_a_good_upload_after_failures_lets_the_import_finish(node, camera, dataset, services):
    event = dataset.add_event(camera, file_count=1)
    record = event.files[0]
    node.send(event)
    node.send(camera)
    for _ in range(services.config.upload_attempts):
        node.upload(record.file_id, b"corrupted", md5=record.md5)
    node.upload(record.file_id, dataset.contents[record.file_id])
    assert node.send_cached(event.event_id) == {"state": "complete"}


def test_failed_uploads_older_than_the_window_no_longer_count(node, camera, dataset, services,
                                                              monkeypatch):
    from meteorpi_server.storage import store as store_module

    event = dataset.add_event(camera, file_count=1)
    record = event.files[0]
    node.send(event)
    node.send(camera)
    for _ in range(services.config.upload_attempts - 1):
        node.upload(record.file_id, b"corrupted", md5=record.md5)
    # A window later, one more bad upload is the first of a new count, not the last straw.
    later = store_module.now_ms() + services.config.upload_attempts_window_seconds * 1000 + 1
    monkeypatch.setattr(store_module, "now_ms", lambda: later)
    node.upload(record.file_id, b"corrupted again", md5=record.md5)
    assert node.send_cached(event.event_id) == {
        "state": "need_file_data", "file_id": record.file_id.hex}


def test_bytes_with_another_md5_than_the_record_are_asked_for_again(node, camera, dataset):
    event = dataset.add_event(camera, file_count=1)
    record = event.files[0]
    node.send(event)
    node.send(camera)
    other = b"a different but self-consistent upload"
    node.upload(record.file_id, other, md5=md5_bytes(other))
    assert node.send_cached(event.event_id)["state"] == "need_file_data"


def test_bytes_that_keep_missing_the_records_md5_fail_the_import(node, camera, dataset, services):
    # The bytes match the md5 in their upload URL, so they are kept, but never the record's:
    # each round counts as a failed upload, so the exporter is not asked for them for ever.
    event = dataset.add_event(camera, file_count=1)
    record = event.files[0]
    node.send(event)
    node.send(camera)
    other = b"a different but self-consistent upload"
    attempts = services.config.upload_attempts
    states = []
    for _ in range(attempts):
        node.upload(record.file_id, other, md5=md5_bytes(other))
        reply = node.send_cached(event.event_id)
        states.append(reply["state"])
    assert states == ["need_file_data"] * (attempts - 1) + ["failed"]
    assert record.file_id.hex in reply["message"] and "md5" in reply["message"]
    assert stored(services)["events"] == 0
    # The right bytes still complete it.
    node.upload(record.file_id, dataset.contents[record.file_id])
    assert node.send_cached(event.event_id) == {"state": "complete"}


def test_a_file_id_that_belongs_to_another_event_fails_without_writing(node, camera, dataset, services):
    first = dataset.add_event(camera, file_count=1)
    node.replicate(first, dataset.statuses, dataset.contents)
    thief = factories.event(camera, [first.files[0]])
    reply = node.send(thief)
    assert reply["state"] == "failed"
    assert first.files[0].file_id.hex in reply["message"] or "conflicts" in reply["message"]
    assert stored(services)["events"] == 1


def test_bytes_of_a_stored_file_are_never_replaced(node, camera, dataset, services):
    record = dataset.add_file(camera)
    node.replicate(record, dataset.statuses, dataset.contents)
    other = b"replacement attempt"
    node.upload(record.file_id, other, md5=md5_bytes(other))
    assert stored_bytes(services.files, record.file_id) == dataset.contents[record.file_id]


def test_uploaded_bytes_whose_record_never_arrives_are_removed_after_the_wait(
        settings, exporter_auth, camera, dataset):
    from meteorpi_server import create_app
    from meteorpi_server.storage.maintenance import sweep_orphan_data

    settings["orphan_data_seconds"] = 1
    app = create_app(settings)
    services = app.extensions["meteorpi"]
    node = ProtocolClient(app.test_client(), exporter_auth)
    kept, orphan = dataset.add_file(camera), dataset.add_file(camera)
    node.upload(orphan.file_id, dataset.contents[orphan.file_id])
    node.replicate(kept, dataset.statuses, dataset.contents)
    with services.database.write() as session:  # age both blobs past the wait
        session.execute(update(StoredBlobRow).values(touched_at=0))
    result = sweep_orphan_data(services.database, services.files, 1, 3600)
    assert result.orphaned_files == 1
    assert not services.files.exists(orphan.file_id)
    assert services.files.exists(kept.file_id)
    services.database.dispose()


def test_bytes_that_arrive_before_their_record_are_used_when_it_comes(node, camera, dataset):
    record = dataset.add_file(camera)
    node.upload(record.file_id, dataset.contents[record.file_id])
    node.send(camera)
    assert node.send(record) == {"state": "complete"}


def test_the_receiver_class_comes_from_configuration(settings, exporter_auth, camera, dataset):
    from meteorpi_server import create_app

    settings["receiver"] = "meteorpi_server.receiver:BaseImportReceiver"
    app = create_app(settings)
    node = ProtocolClient(app.test_client(), exporter_auth)
    event = dataset.add_event(camera, file_count=2)
    assert node.send(event) == {"state": "complete"}  # accepts everything, keeps nothing
    assert node.send(camera) == {"state": "continue"}
    with app.extensions["meteorpi"].database.read() as session:
        assert store.count_rows(session)["events"] == 0
    app.extensions["meteorpi"].database.dispose()


def test_the_same_event_from_two_exporters_at_the_same_moment_is_one_row_and_no_error(
        app, make_user, camera, dataset, services, monkeypatch):
    import threading

    event = dataset.add_event(camera, file_count=1)
    nodes = [ProtocolClient(app.test_client(), make_user(name, "import")) for name in ("a", "b")]
    for node in nodes:
        node.send(camera)
        record = event.files[0]
        node.upload(record.file_id, dataset.contents[record.file_id])
    # Hold both imports after their "is it stored yet?" checks, so both go on to insert.
    both_checked = threading.Barrier(2, timeout=10)
    real_check = store.missing_statuses

    def check_then_wait(session, status_ids):
        missing = real_check(session, status_ids)
        both_checked.wait()
        return missing

    monkeypatch.setattr(store, "missing_statuses", check_then_wait)
    replies = []
    threads = [threading.Thread(target=lambda node=node: replies.append(node.send(event)))
               for node in nodes]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert replies == [{"state": "complete"}, {"state": "complete"}]
    assert stored(services)["events"] == 1


def test_the_server_describes_what_it_speaks(client, exporter_auth, services):
    reply = client.get("/import", auth=exporter_auth).get_json()
    assert reply["server"] == "meteorpi"
    assert reply["protocols"] == ["legacy-1", "batch-2"]
    assert reply["server_id"] == services.server_id.hex and len(reply["server_id"]) == 32
    assert reply["limits"]["max_upload_bytes"] == services.config.max_upload_bytes


def test_records_remember_the_server_they_came_from(client, exporter_auth, camera, dataset, services):
    from meteorpi_server.storage.orm import CameraStatusRow, EventRow

    origin = uuid.uuid4()
    event = dataset.add_event(camera, file_count=0)
    headers = {"Meteorpi-Origin": origin.hex}
    for document in ({"type": "status", "status": camera.to_dict()},
                     {"type": "event", "event": event.to_dict()}):
        client.post("/import", json=document, auth=exporter_auth, headers=headers)
    with services.database.read() as session:
        assert session.get(EventRow, event.event_id).origin_server == origin
        assert session.get(CameraStatusRow, camera.status_id).origin_server == origin


def test_a_legacy_node_without_an_origin_header_is_recorded_without_one(node, camera, dataset, services):
    from meteorpi_server.storage.orm import EventRow

    event = dataset.add_event(camera, file_count=0)
    node.replicate(event, dataset.statuses, dataset.contents)
    with services.database.read() as session:
        assert session.get(EventRow, event.event_id).origin_server is None


def test_a_malformed_origin_header_is_a_400(client, exporter_auth, services):
    response = client.post("/import", json={"type": "cached_entity", "cached_entity_id": "0" * 32},
                           auth=exporter_auth, headers={"Meteorpi-Origin": "nope"})
    assert response.status_code == 400
    assert response.get_json()["field"] == "Meteorpi-Origin"


def test_a_cameras_new_status_ends_its_current_one_and_a_late_one_ends_at_the_next(
        node, services):
    first = factories.status(valid_from=factories.NIGHT)
    second = factories.status(valid_from=factories.NIGHT + 3_600_000)
    late = factories.status(valid_from=factories.NIGHT - 3_600_000)
    other_camera = factories.status(camera_id="cam-2", valid_from=factories.NIGHT)
    for status in (first, other_camera, second, late):
        assert node.send(status) == {"state": "continue"}
    with services.database.read() as session:
        valid_to = {status.status_id: store.get_status(session, status.status_id).valid_to
                    for status in (first, second, late, other_camera)}
    assert valid_to == {first.status_id: second.valid_from, second.status_id: None,
                        late.status_id: first.valid_from, other_camera.status_id: None}
