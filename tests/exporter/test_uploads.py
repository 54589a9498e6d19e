"""How the exporter sends a file's bytes: in chunks of the configured size, never looping
on replies that do not move the upload on, and waiting out an upload another request
still holds."""
from __future__ import annotations

import datetime
import fcntl
import json
import types
import uuid
from typing import Callable

import pytest
import requests
from conftest import PASSWORD
from export_nodes import (  # noqa: F401
    EXPORT_USER,
    extra_postgres_databases,
    make_node,
    node_database,
    record_ids,
)
from werkzeug.wrappers import Request

from meteorpi_model import EventSearch, ExportConfiguration, md5_bytes
from meteorpi_server.config import Config
from meteorpi_server.exporter import configs, resumable
from meteorpi_server.exporter.handshake import target_session
from meteorpi_server.exporter.resumable import ResumableUploader, UploadFailed
from meteorpi_server.exporter.runner import Exporter, ExporterSettings
from meteorpi_server.node.demo import DemoPlan, generate

DATA = bytes(range(256)) * 40  # 10 KiB
MD5 = md5_bytes(DATA)


@pytest.fixture
def pauses(monkeypatch):
    """The uploader's pauses, in seconds, taken without waiting."""
    taken: list[float] = []
    monkeypatch.setattr(resumable, "time", types.SimpleNamespace(sleep=taken.append))
    return taken


@pytest.fixture
def data_file(tmp_path):
    path = tmp_path / "frame.png"
    path.write_bytes(DATA)
    return path


# The configured chunk size ------------------------------------------------------------------

def test_uploads_use_the_configured_export_chunk_bytes(make_node):
    night = DemoPlan(cameras=1, nights=1, events_per_night=2, files_per_event=1,
                     standalone_files=0, file_size=5000, first_night=datetime.date(2026, 11, 1))
    source = make_node("source")
    generate(source.recorder, night)
    chunks: list[int] = []

    def count_chunks(app):
        def wsgi(environ, start_response):
            if Request(environ).method == "PATCH":
                chunks.append(int(environ["CONTENT_LENGTH"]))
            return app(environ, start_response)
        return wsgi

    target = make_node("central", 0, batch_protocol=False).serve(count_chunks)
    with source.services.database.write() as session:
        configs.add(session, ExportConfiguration(
            config_id=uuid.uuid4(), name="central", target_url=target.import_url,
            user_id=EXPORT_USER, password=PASSWORD, search=EventSearch()))
    settings = ExporterSettings.from_config(Config.from_mapping({"export_chunk_bytes": 2048}))
    assert settings.chunk_bytes == 2048

    summary = Exporter(source.services.database, source.services.files, settings).run_once()

    assert summary.targets["central"].entities_sent == night.events_per_night
    # Each 5000-byte file went as 2048 + 2048 + 904.
    assert sorted(chunks) == sorted([2048, 2048, 904] * night.events_per_night)
    assert record_ids(target)["events"] == record_ids(source)["events"]


# Replies that do not move the upload on -----------------------------------------------------

class ScriptedTarget:
    """A stand-in for a requests.Session: answers GET (the offset) and PATCH (a chunk) with
    the replies given, and fails the test if the uploader never stops asking."""

    def __init__(self, offset: dict, patch: Callable):
        self.offset_reply, self.patch_reply = offset, patch
        self.patches = 0

    def get(self, url, **kwargs):
        return self._count(_response(200, self.offset_reply))

    def patch(self, url, data, headers, **kwargs):
        self.patches += 1
        return self._count(self.patch_reply(int(headers["Upload-Offset"])))

    def _count(self, response):
        assert self.patches < 100, "the uploader kept going round"
        return response


def _response(status: int, body) -> requests.Response:
    response = requests.Response()
    response.status_code = status
    response._content = body.encode() if isinstance(body, str) else json.dumps(body).encode()
    return response


@pytest.mark.parametrize("offset, reply", [
    (len(DATA), "<html>Welcome to nginx!</html>"),         # a proxy's page, at the end
    (0, "<html>Welcome to nginx!</html>"),                 # ... or at the start
    (4096, {"offset": 4096, "complete": False}),           # the same offset, again and again
], ids=["page-at-the-end", "page-at-the-start", "same-offset"])
def test_replies_that_do_not_move_the_offset_on_are_failures(data_file, pauses, offset, reply):
    target = ScriptedTarget({"offset": offset, "complete": False}, lambda _: _response(200, reply))
    uploader = ResumableUploader(target, "http://target/import", chunk_size=4096, attempts=4)
    with open(data_file, "rb") as source, pytest.raises(UploadFailed, match="gave up after 4 attempts"):
        uploader.upload(uuid.uuid4(), MD5, source)
    assert target.patches == 4


def test_a_chunk_the_target_timed_out_is_resumed_from_the_targets_offset(data_file, pauses):
    held = {"offset": 0}

    def patch(offset: int) -> requests.Response:
        if offset == 4096 and not pauses:  # the link stalled mid-chunk: 1000 bytes arrived
            held["offset"] = 5096
            return _response(408, {"error": "request_timeout", "message": "sender silent"})
        held["offset"] = min(offset + 4096, len(DATA))
        return _response(200, {"offset": held["offset"], "complete": held["offset"] == len(DATA)})

    uploader = ResumableUploader(ScriptedTarget(held, patch), "http://target/import", chunk_size=4096)
    with open(data_file, "rb") as source:
        outcome = uploader.upload(uuid.uuid4(), MD5, source)
    assert outcome.complete and len(pauses) == 1
    # The first chunk, then the rest from the target's offset: the 1000 bytes of the cut
    # chunk that arrived are not sent again.
    assert outcome.bytes_sent == 4096 + (len(DATA) - 5096)


def test_an_upload_busy_reply_is_waited_out_for_longer_than_the_target_holds_a_stale_request(
        data_file, pauses):
    busy = {"error": "upload_busy", "message": "another request is writing to this upload"}
    target = ScriptedTarget({"offset": 0, "complete": False}, lambda _: _response(409, busy))
    uploader = ResumableUploader(target, "http://target/import", chunk_size=4096)
    with open(data_file, "rb") as source, pytest.raises(UploadFailed, match="to be free"):
        uploader.upload(uuid.uuid4(), MD5, source)
    # The target ends a stale request after upload_read_timeout_seconds of silence.
    stale_after = Config.from_mapping({}).upload_read_timeout_seconds
    assert stale_after < sum(pauses) < 2 * stale_after
    assert pauses[:4] == sorted(pauses[:4]) and pauses[0] < pauses[3], "pauses grow"
    assert max(pauses) <= stale_after / 4, "but not so long that a free upload waits long"


def test_an_upload_held_by_a_stale_request_goes_on_once_it_is_free(make_node, data_file, monkeypatch):
    target = make_node("central").serve()
    file_id = uuid.uuid4()
    # A request cut off on the way still holds the upload's lock, as the target's own
    # writer does until it times out.
    holder = open(target.services.files.upload_path(file_id, MD5), "ab")
    fcntl.flock(holder.fileno(), fcntl.LOCK_EX)
    pauses: list[float] = []

    def pause(seconds: float) -> None:
        pauses.append(seconds)
        if len(pauses) == 3:  # the target ends the stale request meanwhile
            holder.close()

    monkeypatch.setattr(resumable, "time", types.SimpleNamespace(sleep=pause))
    session = target_session()
    session.auth = (EXPORT_USER, PASSWORD)
    uploader = ResumableUploader(session, target.import_url, chunk_size=4096, retry_delay=0.05)
    try:
        with open(data_file, "rb") as source:
            outcome = uploader.upload(file_id, MD5, source)
    finally:
        holder.close()
        session.close()
    assert outcome.complete and outcome.bytes_sent == len(DATA)
    assert len(pauses) == 3 and pauses == sorted(pauses) and pauses[0] > 0
    assert target.services.files.path_for(file_id).read_bytes() == DATA


# Replies about the target, not the file ----------------------------------------------------

class LimitedTarget:
    """A stand-in session for a target that takes chunks of at most ``limit`` bytes,
    announcing ``announced`` at GET /import (None: it answers that with ``describe``)."""

    def __init__(self, limit: int, announced: int | None, describe: int = 200):
        self.limit, self.announced, self.describe = limit, announced, describe
        self.held = b""
        self.chunks: list[int] = []

    def get(self, url, **kwargs):
        if url.endswith("/import"):
            return _response(self.describe, {"uploads": {"resumable": {
                "version": 1, "max_chunk_bytes": self.announced}}})
        return _response(200, {"offset": len(self.held), "complete": False})

    def patch(self, url, data, headers, **kwargs):
        assert len(self.chunks) < 100, "the uploader kept going round"
        self.chunks.append(len(data))
        if len(data) > self.limit:
            return _response(413, {"error": "too_large", "message": "chunk too large"})
        self.held += data
        return _response(200, {"offset": len(self.held), "complete": self.held == DATA})


def test_a_target_that_lowered_its_chunk_limit_gets_smaller_chunks(data_file, pauses):
    target = LimitedTarget(limit=3000, announced=3000)
    uploader = ResumableUploader(target, "http://target/import", chunk_size=8192)
    with open(data_file, "rb") as source:
        outcome = uploader.upload(uuid.uuid4(), MD5, source)
    assert outcome.complete and target.held == DATA
    assert target.chunks == [8192, 3000, 3000, 3000, 1240]


@pytest.mark.parametrize("announced, describe", [(None, 200), (8192, 200), (3000, 500)],
                         ids=["no-limit", "same-limit", "describe-fails"])
def test_a_413_the_targets_limits_do_not_explain_refuses_the_file(data_file, pauses, announced,
                                                                  describe):
    from meteorpi_server.exporter.resumable import UploadRefused

    target = LimitedTarget(limit=3000, announced=announced, describe=describe)
    uploader = ResumableUploader(target, "http://target/import", chunk_size=8192)
    with open(data_file, "rb") as source, pytest.raises(UploadRefused, match="413"):
        uploader.upload(uuid.uuid4(), MD5, source)


@pytest.mark.parametrize("status", [401, 403, 404, 405])
@pytest.mark.parametrize("on", ["offset", "chunk"])
def test_auth_and_url_errors_mid_upload_are_the_targets_trouble_not_the_entitys(
        tmp_path, pauses, status, on):
    import factories

    from meteorpi_server.exporter.handshake import (
        ImportClient,
        TargetError,
        export_entity,
    )

    class WrongTarget:
        headers: dict = {}

        def get(self, url, **kwargs):
            if url.endswith("/import"):
                return _response(200, {"uploads": {"resumable": {"version": 1}}})
            if on == "offset":
                return _response(status, {"error": "nope", "message": "no"})
            return _response(200, {"offset": 0, "complete": False})

        def post(self, url, **kwargs):
            return _response(200, {"state": "need_file_data", "file_id": record.file_id.hex})

        def patch(self, url, **kwargs):
            return _response(status, {"error": "nope", "message": "no"})

    dataset = factories.DataSet(tmp_path / "node")
    record = dataset.add_file(factories.status())
    client = ImportClient("http://target/import", "exporter", "secret", session=WrongTarget())
    client.describe()
    with pytest.raises(TargetError, match=f" answered {status}"):  # the runner's advice reads it
        export_entity(client, record, dataset)


def test_an_upload_the_target_holds_under_another_length_is_tried_again_later(data_file, pauses):
    mismatch = {"error": "length_mismatch", "offset": 100, "length": 5, "message": "not 5"}
    target = ScriptedTarget({"offset": 0, "complete": False}, lambda _: _response(409, mismatch))
    uploader = ResumableUploader(target, "http://target/import", chunk_size=4096)
    with open(data_file, "rb") as source, pytest.raises(UploadFailed, match="of 5 bytes") as failure:
        uploader.upload(uuid.uuid4(), MD5, source)
    assert type(failure.value) is UploadFailed and target.patches == 1


# Round trips over one entity ----------------------------------------------------------------

def test_a_target_asking_for_the_same_file_again_and_again_gets_it_three_times(tmp_path):
    import factories

    from meteorpi_server.exporter.handshake import ImportClient, _Answer, export_entity

    dataset = factories.DataSet(tmp_path / "node")
    event = dataset.add_event(factories.status(), file_count=2)
    wanted = event.files[1]
    uploads: list[uuid.UUID] = []

    class Forgetful(ImportClient):
        """A target that takes each upload and asks for the same file once more."""

        def send(self, document):
            return _response(200, {"state": "need_file_data", "file_id": wanted.file_id.hex})

        def upload_file(self, record, md5, source, progress=None):
            uploads.append(record.file_id)
            return _Answer(200, {"state": "continue"}), len(source.read())

    result = export_entity(Forgetful("http://target/import", "exporter", "secret"), event, dataset)
    assert uploads == [wanted.file_id] * 3
    assert result.state == "stuck"
    assert wanted.file_id.hex in result.message and "3 uploads" in result.message
