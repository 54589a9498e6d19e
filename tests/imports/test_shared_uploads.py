"""Resumable uploads into a bucket: any host takes any chunk, and nothing acknowledged is
lost when every host restarts (the state is in the database, the bytes in the bucket)."""
from __future__ import annotations

import secrets
import uuid

import pytest
from protocol import ResumableClient, chunk_checksum
from store_queries import nothing_partial, stored_bytes

from meteorpi_model import md5_bytes
from meteorpi_server import create_app

MIB = 1024 ** 2
# Three 3 MiB chunks make less than one 8 MiB part: the first two wait in the tail object.
DATA = secrets.token_bytes(20 * MIB + 12345)
MD5 = md5_bytes(DATA)
CHUNK = 3 * MIB

pytestmark = pytest.mark.parametrize("file_store_kind", ["s3"], indirect=True)


@pytest.fixture
def hosts(settings, make_user):
    """Two servers (two apps) on one database and one bucket, as behind a balancer."""
    make_user("node2", "import")
    apps = [create_app(settings), create_app(settings)]
    yield [ResumableClient(app.test_client(), ("node2", "correct horse battery staple"))
           for app in apps]
    for app in apps:
        app.extensions["meteorpi"].database.dispose()


def send(host, file_id, offset):
    piece = DATA[offset:offset + CHUNK]
    reply = host.chunk(file_id, MD5, offset, len(DATA), piece, chunk_checksum(piece))
    assert reply.status_code == 200, reply.get_json()
    return reply.get_json()


def test_chunks_alternating_between_hosts_make_one_verified_file(hosts, services):
    file_id = uuid.uuid4()
    for number, offset in enumerate(range(0, len(DATA), CHUNK)):
        reply = send(hosts[number % 2], file_id, offset)
        if not reply["complete"]:  # each host reports what the other took too
            assert hosts[(number + 1) % 2].state(file_id, MD5).get_json()["offset"] == \
                offset + CHUNK
    assert reply["complete"]
    assert stored_bytes(services.files, file_id) == DATA
    assert nothing_partial(services.files)


def test_every_host_restarting_loses_no_acknowledged_chunk(settings, make_user, services):
    make_user("node2", "import")
    file_id = uuid.uuid4()
    acknowledged = 0
    for offset in range(0, len(DATA), CHUNK):  # a new server for every chunk
        app = create_app(settings)
        host = ResumableClient(app.test_client(), ("node2", "correct horse battery staple"))
        assert host.state(file_id, MD5).get_json()["offset"] == acknowledged
        acknowledged = send(host, file_id, offset)["offset"]
        app.extensions["meteorpi"].database.dispose()
    assert stored_bytes(services.files, file_id) == DATA


def test_a_file_whose_md5_does_not_match_is_never_published(hosts, services):
    file_id, wrong_md5 = uuid.uuid4(), md5_bytes(b"other bytes")
    reply = None
    for number, offset in enumerate(range(0, len(DATA), CHUNK)):
        piece = DATA[offset:offset + CHUNK]
        reply = hosts[number % 2].chunk(file_id, wrong_md5, offset, len(DATA), piece)
    assert reply.status_code == 422 and reply.get_json()["error"] == "md5_mismatch"
    assert not services.files.exists(file_id)
    assert nothing_partial(services.files)
    assert hosts[0].state(file_id, wrong_md5).get_json()["offset"] == 0


def test_a_chunk_resent_to_the_other_host_after_a_lost_reply_is_a_conflict_naming_the_offset(
        hosts):
    file_id = uuid.uuid4()
    send(hosts[0], file_id, 0)
    again = hosts[1].chunk(file_id, MD5, 0, len(DATA), DATA[:CHUNK])
    assert again.status_code == 409
    assert again.get_json()["offset"] == CHUNK
