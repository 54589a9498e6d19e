"""Bytes at a file's path always are the bytes its index row names, whatever runs at once.

Uploads of a file (legacy, resumable, bundled), the record that claims them and the
sweeps that remove unclaimed bytes can all run at the same moment in different workers.
These tests force the interleavings that used to leave a row naming other bytes than
those on disk, or a stored record whose bytes were replaced or deleted.
"""
from __future__ import annotations

import dataclasses
import io
import threading

import pytest
from protocol import ProtocolClient
from sqlalchemy import update
from store_queries import blob_md5, stored_bytes

from meteorpi_model import md5_bytes
from meteorpi_server.storage import store
from meteorpi_server.storage.maintenance import sweep_orphan_data
from meteorpi_server.storage.orm import StoredBlobRow

# How long a test lets a competing upload run before going on: long enough for one to
# finish if nothing holds it back. The assertions never depend on it being long enough.
COMPETITOR_HEAD_START = 0.5


@pytest.fixture
def node(client, exporter_auth):
    return ProtocolClient(client, exporter_auth)


def held(services, file_id):
    """(md5 of the index row, md5 of the bytes in the store) for ``file_id``."""
    with services.database.read() as session:
        row_md5 = blob_md5(session, file_id)
    data = stored_bytes(services.files, file_id)
    return row_md5, (md5_bytes(data) if data is not None else None)


class HeldBack(io.RawIOBase):
    """An upload body whose sender stalls after its first piece until released."""

    def __init__(self, data: bytes):
        self.data, self.sent = data, False
        self.stalled, self.release = threading.Event(), threading.Event()

    def readable(self):
        return True

    def read(self, size=-1):
        if not self.sent:
            self.sent = True
            return self.data[:1]
        if not self.stalled.is_set():
            self.stalled.set()
            self.release.wait(30)
            return self.data[1:]
        return b""


def test_an_upload_that_began_before_its_record_was_stored_never_replaces_its_bytes(
        node, camera, dataset, services):
    record = dataset.add_file(camera)
    good = dataset.contents[record.file_id]
    other = b"other bytes, with an md5 of their own"
    slow = HeldBack(other)
    upload = threading.Thread(target=services.receiver.receive_file_data,
                              args=(record.file_id, md5_bytes(other), slow, "late-node"))
    upload.start()
    assert slow.stalled.wait(10)  # past the "is it needed?" check, still sending
    assert node.replicate(record, dataset.statuses, dataset.contents)[-1] == "complete"
    slow.release.set()
    upload.join(30)
    assert held(services, record.file_id) == (md5_bytes(good), md5_bytes(good))


def test_two_uploads_of_different_bytes_at_once_leave_the_row_naming_the_bytes_on_disk(
        camera, dataset, services, monkeypatch):
    record = dataset.add_file(camera)
    first, second = b"first version of the bytes", b"second version of the bytes"
    competitor = threading.Thread(target=services.receiver.receive_file_data,
                                  args=(record.file_id, md5_bytes(second), io.BytesIO(second), "b"))
    real_record_blobs = store.record_blobs

    def let_the_other_upload_run_first(session, blobs):
        # The first upload's bytes are in place, its row not yet written: the moment at
        # which the other upload could slip in between.
        if not competitor.is_alive() and competitor.ident is None:
            competitor.start()
            competitor.join(COMPETITOR_HEAD_START)
        return real_record_blobs(session, blobs)

    monkeypatch.setattr(store, "record_blobs", let_the_other_upload_run_first)
    services.receiver.receive_file_data(record.file_id, md5_bytes(first), io.BytesIO(first), "a")
    competitor.join(30)
    row_md5, disk_md5 = held(services, record.file_id)
    assert row_md5 == disk_md5 and row_md5 in (md5_bytes(first), md5_bytes(second))


def test_bytes_uploaded_again_while_the_sweep_removes_them_are_kept(
        node, camera, dataset, services, monkeypatch):
    record = dataset.add_file(camera)
    data = dataset.contents[record.file_id]
    node.upload(record.file_id, data)
    with services.database.write() as session:  # waited past orphan_data_seconds
        session.execute(update(StoredBlobRow).values(touched_at=0))
    # Straight to the placement: the receiver's quick "is it held?" look would see the
    # row the sweep has not yet committed the deletion of, and skip the upload.
    again = threading.Thread(target=services.receiver.blobs.write,
                             args=(record.file_id, io.BytesIO(data), md5_bytes(data)))
    real_remove = services.files.remove

    def upload_again_before_the_file_goes(file_id, **options):
        # The sweep has committed the row's deletion and is about to delete the file.
        if again.ident is None:
            again.start()
            again.join(COMPETITOR_HEAD_START)
        return real_remove(file_id, **options)

    monkeypatch.setattr(services.files, "remove", upload_again_before_the_file_goes)
    sweep_orphan_data(services.database, services.files, 3600, 3600)
    again.join(30)
    assert held(services, record.file_id) == (md5_bytes(data), md5_bytes(data))
    node.send(camera)
    assert node.send(record) == {"state": "complete"}


def test_a_record_without_an_md5_needs_bytes_of_its_size(node, camera, dataset):
    record = dataclasses.replace(dataset.add_file(camera), md5=None)
    node.send(camera)
    short = dataset.contents[record.file_id][:-1]
    node.upload(record.file_id, short)
    assert node.send(record) == {"state": "need_file_data", "file_id": record.file_id.hex}
    node.upload(record.file_id, dataset.contents[record.file_id])
    assert node.send(record) == {"state": "complete"}


def test_failed_uploads_of_one_file_at_once_are_all_counted(camera, dataset, services):
    record = dataset.add_file(camera)
    uploads = 6
    start = threading.Barrier(uploads, timeout=10)
    errors = []

    def upload_wrong_bytes(index):
        wrong = f"not the bytes, try {index}".encode()
        start.wait()
        try:
            services.receiver.receive_file_data(record.file_id, md5_bytes(b"claimed"),
                                                io.BytesIO(wrong), f"node-{index}")
        except Exception as error:  # noqa: BLE001 - what the test is looking for
            errors.append(error)

    threads = [threading.Thread(target=upload_wrong_bytes, args=(index,)) for index in range(uploads)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert errors == []
    with services.database.read() as session:
        assert store.recent_upload_failures(session, record.file_id, 0) == uploads
