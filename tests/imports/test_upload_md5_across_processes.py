"""An upload's md5 is computed as its chunks arrive, in whichever server process takes
them: the stored file must still be exactly the bytes on disk, verified, when chunks
move between processes or the partial file is made anew under a process's feet."""
from __future__ import annotations

import uuid

import factories
import pytest
from protocol import ResumableClient

from meteorpi_model import md5_bytes
from meteorpi_server import create_app
from store_queries import stored_bytes

DATA = factories.file_bytes(300_000)
MD5 = md5_bytes(DATA)
HALF = 150_000


@pytest.fixture
def two_processes(app, settings, exporter_auth):
    """Two apps on one database and file store, as two gunicorn workers are: each has its
    own memory of the uploads it took chunks of."""
    other = create_app(settings)
    yield (ResumableClient(app.test_client(), exporter_auth),
           ResumableClient(other.test_client(), exporter_auth))
    other.extensions["meteorpi"].database.dispose()


def test_an_upload_whose_chunks_alternate_between_processes_is_stored_verified(
        two_processes, services):
    first, second = two_processes
    file_id = uuid.uuid4()
    pieces = [DATA[offset:offset + 50_000] for offset in range(0, len(DATA), 50_000)]
    for index, piece in enumerate(pieces):
        sender = (first, second)[index % 2]
        reply = sender.chunk(file_id, MD5, index * 50_000, len(DATA), piece)
        assert reply.status_code == 200, reply.get_json()
    assert reply.get_json()["complete"] is True
    assert stored_bytes(services.files, file_id) == DATA


def test_bytes_that_fail_the_md5_are_refused_whichever_process_ends_the_upload(two_processes,
                                                                                services):
    first, second = two_processes
    file_id = uuid.uuid4()
    wrong = DATA[:HALF] + bytes(len(DATA) - HALF)
    assert first.chunk(file_id, MD5, 0, len(DATA), wrong[:HALF]).status_code == 200
    reply = first.chunk(file_id, MD5, HALF, len(DATA), wrong[HALF:])
    assert reply.status_code == 422 and reply.get_json()["error"] == "md5_mismatch"
    assert not services.files.exists(file_id)


@pytest.mark.local_store_only  # a partial file on this host's disk, swept and made anew
def test_a_partial_file_made_anew_is_never_taken_for_the_one_a_process_remembers(
        two_processes, services):
    """A process remembers the md5 of the first half it took; the partial is then swept
    away and grown again, to the same length, with other bytes, through another process.
    When the first process takes the last chunk it must judge the bytes on disk, not the
    ones it remembers, and refuse them."""
    first, second = two_processes
    file_id = uuid.uuid4()
    assert first.chunk(file_id, MD5, 0, len(DATA), DATA[:HALF]).status_code == 200
    for leftover in services.files.uploads.iterdir():  # the stale-upload sweep
        leftover.unlink()
    other_bytes = bytes(HALF)
    assert second.chunk(file_id, MD5, 0, len(DATA), other_bytes).status_code == 200
    reply = first.chunk(file_id, MD5, HALF, len(DATA), DATA[HALF:])
    assert reply.status_code == 422 and reply.get_json()["error"] == "md5_mismatch"
    assert not services.files.exists(file_id)


def test_a_checksummed_chunk_refused_leaves_the_remembered_md5_out_of_it(app, exporter_auth,
                                                                         services):
    uploader = ResumableClient(app.test_client(), exporter_auth)
    file_id = uuid.uuid4()
    assert uploader.chunk(file_id, MD5, 0, len(DATA), DATA[:HALF]).status_code == 200
    refused = uploader.chunk(file_id, MD5, HALF, len(DATA), bytes(len(DATA) - HALF),
                             checksum="md5 " + "A" * 22 + "==")
    assert refused.status_code == 422 and refused.get_json()["error"] == "checksum_mismatch"
    reply = uploader.chunk(file_id, MD5, HALF, len(DATA), DATA[HALF:])
    assert reply.status_code == 200 and reply.get_json()["complete"] is True
    assert stored_bytes(services.files, file_id) == DATA
