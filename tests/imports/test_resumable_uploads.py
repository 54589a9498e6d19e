"""Resumable chunked uploads on /import/data/<file_id>/<md5>, beside the legacy upload."""
from __future__ import annotations

import contextlib
import fcntl
import uuid

import factories
import pytest
from protocol import ProtocolClient, ResumableClient, chunk_checksum
from store_queries import stored_bytes

from meteorpi_model import md5_bytes
from meteorpi_server.imports import shared_uploads
from meteorpi_server.imports.resumable import Checksum

DATA = factories.file_bytes(300_000)
MD5 = md5_bytes(DATA)


@pytest.fixture
def uploader(client, exporter_auth):
    return ResumableClient(client, exporter_auth)


@pytest.fixture
def file_id():
    return uuid.uuid4()


def partial_uploads(services):
    return list(services.files.uploads.iterdir()) if services.files.uploads.exists() else []


def test_the_server_announces_resumable_uploads_and_their_limits(client, exporter_auth, services):
    resumable = client.get("/import", auth=exporter_auth).get_json()["uploads"]["resumable"]
    assert resumable == {"version": 1, "max_chunk_bytes": services.config.max_chunk_bytes,
                         "max_file_bytes": services.config.max_upload_bytes,
                         "checksums": ["md5", "sha1", "sha256"]}


def test_a_new_upload_starts_at_offset_zero(uploader, file_id):
    response = uploader.state(file_id, MD5)
    assert response.get_json() == {"offset": 0, "complete": False}
    assert response.headers["Upload-Offset"] == "0"


def test_head_reports_the_offset_in_a_header(client, exporter_auth, uploader, file_id):
    uploader.chunk(file_id, MD5, 0, len(DATA), DATA[:1000])
    response = client.head(f"/import/data/{file_id.hex}/{MD5}", auth=exporter_auth)
    assert response.status_code == 200 and response.headers["Upload-Offset"] == "1000"


def test_each_chunk_moves_the_offset_on(uploader, file_id):
    assert uploader.chunk(file_id, MD5, 0, len(DATA), DATA[:100_000]).get_json() == {
        "offset": 100_000, "complete": False}
    assert uploader.state(file_id, MD5).get_json()["offset"] == 100_000


def test_the_last_chunk_stores_the_verified_file_and_answers_like_a_legacy_upload(uploader, file_id, services):
    reply = uploader.send_all(file_id, DATA, 100_000).get_json()
    assert reply == {"state": "continue", "offset": len(DATA), "complete": True}
    assert stored_bytes(services.files, file_id) == DATA
    assert partial_uploads(services) == []
    assert uploader.state(file_id, MD5).get_json() == {"state": "continue", "complete": True}


def test_a_chunk_at_the_wrong_offset_is_a_conflict_naming_the_right_one(uploader, file_id):
    uploader.chunk(file_id, MD5, 0, len(DATA), DATA[:1000])
    response = uploader.chunk(file_id, MD5, 5000, len(DATA), DATA[5000:6000])
    assert response.status_code == 409
    assert response.get_json()["offset"] == 1000
    assert response.headers["Upload-Offset"] == "1000"
    assert uploader.state(file_id, MD5).get_json()["offset"] == 1000


def test_a_resent_chunk_the_server_already_holds_is_a_conflict_not_a_duplicate(uploader, file_id):
    uploader.chunk(file_id, MD5, 0, len(DATA), DATA[:1000])
    assert uploader.chunk(file_id, MD5, 0, len(DATA), DATA[:1000]).status_code == 409
    assert uploader.state(file_id, MD5).get_json()["offset"] == 1000


def test_a_checksummed_chunk_cut_short_is_not_kept(uploader, file_id):
    uploader.chunk(file_id, MD5, 0, len(DATA), DATA[:1000], chunk_checksum(DATA[:1000]))

    class CutConnection:
        def __init__(self):
            self.sent = False

        def read(self, size=-1):
            if self.sent:
                raise ConnectionResetError("the sender's link dropped")
            self.sent = True
            return DATA[1000:1500]

    with pytest.raises(ConnectionResetError):
        uploader.client.application.extensions["meteorpi"].uploads.append(
            file_id, MD5, 1000, len(DATA), CutConnection(), "exporter",
            checksum=Checksum.parse(chunk_checksum(DATA[1000:2000])))
    assert uploader.state(file_id, MD5).get_json()["offset"] == 1000


def test_a_corrupted_chunk_is_refused_and_the_chunks_before_it_kept(uploader, file_id):
    uploader.chunk(file_id, MD5, 0, len(DATA), DATA[:1000], chunk_checksum(DATA[:1000]))
    bad = uploader.chunk(file_id, MD5, 1000, len(DATA), b"X" + DATA[1001:2000],
                         chunk_checksum(DATA[1000:2000]))
    assert bad.status_code == 422 and bad.get_json()["error"] == "checksum_mismatch"
    assert uploader.state(file_id, MD5).get_json()["offset"] == 1000
    good = uploader.chunk(file_id, MD5, 1000, len(DATA), DATA[1000:2000], chunk_checksum(DATA[1000:2000], "md5"))
    assert good.get_json()["offset"] == 2000


def test_a_file_whose_md5_does_not_match_is_discarded_and_said_so(uploader, file_id, services):
    wrong = md5_bytes(b"something else")
    response = uploader.chunk(file_id, wrong, 0, len(DATA), DATA)
    assert response.status_code == 422
    assert response.get_json()["error"] == "md5_mismatch"
    assert not services.files.exists(file_id)
    assert partial_uploads(services) == []
    assert uploader.state(file_id, wrong).get_json()["offset"] == 0


def test_repeated_md5_failures_fail_the_import(client, exporter_auth, uploader, services, tmp_path):
    dataset = factories.DataSet(tmp_path / "node")
    camera = factories.status()
    record = dataset.add_file(camera)
    node = ProtocolClient(client, exporter_auth)
    node.send(camera)
    for _ in range(services.config.upload_attempts):
        uploader.chunk(record.file_id, record.md5, 0, 5, b"wrong")
    assert node.send(record)["state"] == "failed"


@pytest.mark.parametrize("headers, status, error", [
    ({"Upload-Offset": None}, 400, "bad_header"),
    ({"Upload-Length": "-1"}, 400, "bad_header"),
    ({"Upload-Offset": "\u00b2"}, 400, "bad_header"),  # a digit to str.isdigit, not to int()
    ({"Upload-Length": "3\u00b9"}, 400, "bad_header"),
    ({"Upload-Length": "1_000"}, 400, "bad_header"),
    ({"Upload-Checksum": "crc32 AAAA"}, 400, "bad_upload"),
    ({"Upload-Checksum": "sha256 not-base64!"}, 400, "bad_upload"),
], ids=["no-offset", "negative-length", "superscript-offset", "superscript-length",
        "underscored-length", "unknown-algorithm", "bad-digest"])
def test_a_chunk_with_bad_headers_is_a_400(client, exporter_auth, file_id, services, headers, status, error):
    sent = {"Upload-Offset": "0", "Upload-Length": str(len(DATA)), **headers}
    response = client.patch(f"/import/data/{file_id.hex}/{MD5}", data=DATA[:10], auth=exporter_auth,
                            headers={k: v for k, v in sent.items() if v is not None},
                            content_type="application/offset+octet-stream")
    assert response.status_code == status and response.get_json()["error"] == error
    assert partial_uploads(services) in ([], [services.files.upload_path(file_id, MD5)])


def test_a_chunk_that_is_not_offset_octet_stream_is_a_415(client, exporter_auth, file_id):
    response = client.patch(f"/import/data/{file_id.hex}/{MD5}", data=DATA[:10], auth=exporter_auth,
                            headers={"Upload-Offset": "0", "Upload-Length": "10"},
                            content_type="application/json")
    assert response.status_code == 415


def test_a_chunk_past_the_announced_length_is_refused(uploader, file_id):
    response = uploader.chunk(file_id, MD5, 0, 10, DATA[:20])
    assert response.status_code == 400
    assert uploader.state(file_id, MD5).get_json()["offset"] == 0


def test_a_chunk_running_past_the_length_is_refused_whole_not_kept_in_part(uploader, file_id):
    data = factories.file_bytes(3 << 20)  # more than the server reads at once
    response = uploader.chunk(file_id, md5_bytes(data[:(3 << 20) - 100]), 0, (3 << 20) - 100, data)
    assert response.status_code == 400
    assert uploader.state(file_id, md5_bytes(data[:(3 << 20) - 100])).get_json()["offset"] == 0


def test_the_first_chunk_pins_the_files_length(uploader, file_id, services):
    uploader.chunk(file_id, MD5, 0, len(DATA), DATA[:1000])
    # An empty chunk claiming the file ends here would otherwise end the upload (and
    # discard it when the md5 does not match).
    response = uploader.chunk(file_id, MD5, 1000, 1000, b"")
    assert response.status_code == 409
    assert response.get_json() | {"message": ""} == {
        "error": "length_mismatch", "offset": 1000, "length": len(DATA), "message": "",
        "state": "failed"}
    assert response.headers["Upload-Offset"] == "1000"
    assert response.headers["Upload-Length"] == str(len(DATA))
    longer = uploader.chunk(file_id, MD5, 1000, len(DATA) + 5, DATA[1000:2000])
    assert longer.status_code == 409 and longer.get_json()["error"] == "length_mismatch"
    assert uploader.state(file_id, MD5).get_json()["offset"] == 1000
    assert uploader.chunk(file_id, MD5, 1000, len(DATA), DATA[1000:]).get_json()["complete"]
    assert stored_bytes(services.files, file_id) == DATA
    assert partial_uploads(services) == []


def test_an_upload_that_holds_no_bytes_yet_may_declare_a_new_length(uploader, file_id):
    assert uploader.chunk(file_id, MD5, 0, len(DATA) + 1, b"").get_json()["offset"] == 0
    assert uploader.send_all(file_id, DATA, 100_000).get_json()["complete"]


@pytest.mark.local_store_only  # a partial file and its pin on this host's disk
def test_a_partial_upload_from_before_length_pins_goes_on(uploader, file_id, services):
    services.files.upload_path(file_id, MD5).write_bytes(DATA[:1000])
    response = uploader.chunk(file_id, MD5, 1000, len(DATA), DATA[1000:])
    assert response.get_json()["complete"]
    assert stored_bytes(services.files, file_id) == DATA


def test_chunks_and_files_over_the_limits_are_a_413(settings, exporter_auth, file_id):
    from meteorpi_server import create_app

    settings.update(max_chunk_bytes=1000, max_upload_bytes=200_000)
    app = create_app(settings)
    uploader = ResumableClient(app.test_client(), exporter_auth)
    assert uploader.chunk(file_id, MD5, 0, len(DATA), DATA[:5000]).status_code == 413
    assert uploader.chunk(file_id, MD5, 0, len(DATA), DATA[:500]).status_code == 413  # file too large
    app.extensions["meteorpi"].database.dispose()


@contextlib.contextmanager
def another_writer(services, file_id):
    """Another request at work on the upload, on this host or (with a bucket) any other."""
    if services.files.kind == "s3":
        with shared_uploads.exclusive(services.database, services.files, file_id, MD5):
            yield
        return
    with open(services.files.upload_path(file_id, MD5), "rb") as other_writer:
        fcntl.flock(other_writer.fileno(), fcntl.LOCK_EX)
        yield


def test_two_writers_on_one_upload_do_not_interleave(uploader, file_id, services):
    uploader.chunk(file_id, MD5, 0, len(DATA), DATA[:1000])
    with another_writer(services, file_id):
        response = uploader.chunk(file_id, MD5, 1000, len(DATA), DATA[1000:2000])
    assert response.status_code == 409 and response.get_json()["error"] == "upload_busy"
    assert uploader.state(file_id, MD5).get_json()["offset"] == 1000


@pytest.mark.local_store_only  # a partial file and its pin on this host's disk
def test_a_chunk_is_never_acknowledged_into_a_partial_file_swept_away_under_it(
        uploader, file_id, services, monkeypatch):
    import os

    uploader.chunk(file_id, MD5, 0, len(DATA), DATA[:1000])
    partial = services.files.upload_path(file_id, MD5)
    real_flock = fcntl.flock

    def sweep_then_lock(descriptor, operation):
        # The next chunk has opened the partial file but not yet locked it: just then the
        # upload looks abandoned and the sweep of stale uploads deletes it.
        monkeypatch.setattr(fcntl, "flock", real_flock)
        os.utime(partial, (0, 0))
        assert services.files.remove_stale_uploads(older_than_seconds=60) == 1
        return real_flock(descriptor, operation)

    monkeypatch.setattr(fcntl, "flock", sweep_then_lock)
    response = uploader.chunk(file_id, MD5, 1000, len(DATA), DATA[1000:2000])
    assert response.status_code == 409
    assert response.get_json()["offset"] == 0  # the truth: the server holds nothing now
    assert uploader.state(file_id, MD5).get_json()["offset"] == 0
    assert uploader.send_all(file_id, DATA, 100_000).get_json()["complete"]
    assert stored_bytes(services.files, file_id) == DATA


def test_an_upload_of_bytes_already_stored_is_complete_at_once(client, exporter_auth, uploader, tmp_path):
    dataset = factories.DataSet(tmp_path / "node")
    camera = factories.status()
    record = dataset.add_file(camera)
    ProtocolClient(client, exporter_auth).replicate(record, dataset.statuses, dataset.contents)
    assert uploader.state(record.file_id, record.md5).get_json() == {"state": "continue", "complete": True}
    data = dataset.contents[record.file_id]
    assert uploader.chunk(record.file_id, record.md5, 0, len(data), data[:10]).get_json()["complete"]


def test_a_resumable_upload_completes_the_handshake(client, exporter_auth, uploader, tmp_path):
    dataset = factories.DataSet(tmp_path / "node")
    camera = factories.status()
    event = dataset.add_event(camera, file_count=2, size=250_000)
    node = ProtocolClient(client, exporter_auth)
    node.send(event)
    node.send(camera)
    for record in event.files:
        assert node.send_cached(event.event_id) == {"state": "need_file_data", "file_id": record.file_id.hex}
        uploader.send_all(record.file_id, dataset.contents[record.file_id], 64 * 1024)
    assert node.send_cached(event.event_id) == {"state": "complete"}


def test_an_empty_file_is_one_empty_chunk(uploader, file_id, services):
    empty_md5 = md5_bytes(b"")
    assert uploader.chunk(file_id, empty_md5, 0, 0, b"").get_json()["complete"]
    assert stored_bytes(services.files, file_id) == b""


def test_the_file_stored_hook_sees_each_stored_file_once(settings, exporter_auth, tmp_path, monkeypatch):
    from meteorpi_server import create_app
    from meteorpi_server.receiver import DatabaseImportReceiver

    seen = []
    monkeypatch.setattr(DatabaseImportReceiver, "file_stored",
                        lambda self, record, path: seen.append((record.file_id, stored_bytes(
                            self.files, record.file_id), path)))
    app = create_app(settings)
    dataset = factories.DataSet(tmp_path / "node")
    event = dataset.add_event(factories.status(), file_count=2)
    node = ProtocolClient(app.test_client(), exporter_auth)
    node.replicate(event, dataset.statuses, dataset.contents)
    node.send(event)  # already stored: no second call
    files = app.extensions["meteorpi"].files
    # On disk the hook is also told where the bytes are; a bucket has no path to give.
    assert seen == [(record.file_id, dataset.contents[record.file_id],
                     files.path_for(record.file_id) if files.kind == "local" else None)
                    for record in event.files]
    app.extensions["meteorpi"].database.dispose()


def test_a_failing_file_stored_hook_does_not_fail_the_import(settings, exporter_auth, tmp_path, monkeypatch):
    from meteorpi_server import create_app
    from meteorpi_server.receiver import DatabaseImportReceiver

    def broken(self, record, path):
        raise RuntimeError("thumbnailer crashed")

    monkeypatch.setattr(DatabaseImportReceiver, "file_stored", broken)
    app = create_app(settings)
    dataset = factories.DataSet(tmp_path / "node")
    record = dataset.add_file(factories.status())
    node = ProtocolClient(app.test_client(), exporter_auth)
    assert node.replicate(record, dataset.statuses, dataset.contents)[-1] == "complete"
    app.extensions["meteorpi"].database.dispose()


def test_the_server_removes_idle_partial_uploads_by_itself(settings, exporter_auth):
    import os

    from meteorpi_server import create_app

    settings["upload_expiry_seconds"] = 60
    app = create_app(settings)
    services = app.extensions["meteorpi"]
    uploader = ResumableClient(app.test_client(), exporter_auth)
    abandoned, active = uuid.uuid4(), uuid.uuid4()
    left_behind = services.files.upload_path(abandoned, MD5)  # by a node that went away
    left_behind.write_bytes(DATA[:1000])
    os.utime(left_behind, (0, 0))
    uploader.chunk(active, MD5, 0, len(DATA), DATA[:1000])  # any upload triggers the sweep
    assert uploader.state(abandoned, MD5).get_json()["offset"] == 0
    assert uploader.state(active, MD5).get_json()["offset"] == 1000
    services.database.dispose()


@pytest.mark.parametrize("method", ["POST", "GET"])
def test_the_server_removes_idle_partial_uploads_without_upload_requests(settings, exporter_auth,
                                                                         method):
    import os

    from meteorpi_server import create_app

    settings["upload_expiry_seconds"] = 60
    app = create_app(settings)
    services = app.extensions["meteorpi"]
    client = app.test_client()

    def abandoned_upload():
        path = services.files.upload_path(uuid.uuid4(), MD5)
        path.write_bytes(DATA[:1000])
        os.utime(path, (0, 0))
        return path

    def import_request():  # the node still talks to the server but sends no files
        if method == "POST":
            response = client.post("/import", auth=exporter_auth, json={
                "type": "cached_entity", "cached_entity_id": uuid.uuid4().hex})
        else:
            response = client.get("/import", auth=exporter_auth)
        assert response.status_code == 200

    first = abandoned_upload()
    import_request()
    assert not first.exists()
    second = abandoned_upload()
    import_request()  # the sweep runs at most every ten minutes per worker
    assert second.exists()
    services.database.dispose()


def _partial(services, file_id):
    return services.files.upload_path(file_id, MD5)


def test_bytes_a_crash_left_past_the_confirmed_offset_do_not_count(uploader, file_id, services):
    uploader.chunk(file_id, MD5, 0, len(DATA), DATA[:1000], chunk_checksum(DATA[:1000]))
    with open(_partial(services, file_id), "ab") as partial:  # a chunk cut by a crash
        partial.write(b"x" * 5000)
    assert uploader.state(file_id, MD5).get_json()["offset"] == 1000
    reply = uploader.chunk(file_id, MD5, 1000, len(DATA), DATA[1000:], chunk_checksum(DATA[1000:]))
    assert reply.get_json()["complete"] is True
    assert stored_bytes(services.files, file_id) == DATA


@pytest.mark.local_store_only  # a partial file and its pin on this host's disk
def test_a_pin_a_crash_left_half_written_starts_the_upload_again(uploader, file_id, services):
    uploader.chunk(file_id, MD5, 0, len(DATA), DATA[:1000])
    pin = _partial(services, file_id).with_name(_partial(services, file_id).name + ".length")
    pin.write_bytes(pin.read_bytes()[:10])
    assert uploader.state(file_id, MD5).get_json()["offset"] == 0
    assert uploader.send_all(file_id, DATA, 100_000).get_json()["complete"] is True
    assert stored_bytes(services.files, file_id) == DATA
