"""The bucket file store on a real S3 server (SeaweedFS): what only a bucket can get wrong.

The storage, protocol and downloads suites also run on it (see conftest.py); these tests
cover start-up checks, visibility of large objects, the sweep of what crashes leave in a
bucket, and presigned downloads.
"""
from __future__ import annotations

import io
import secrets
import uuid

import base64

import factories
import pytest
import requests
import seaweed
import yaml
from click.testing import CliRunner
from protocol import ProtocolClient
from store_queries import stored_bytes

from meteorpi_model import md5_bytes
from meteorpi_server.cli import main
from meteorpi_server.storage.db import Database
from meteorpi_server.storage.files import Md5Mismatch
from meteorpi_server.storage.maintenance import sweep_orphan_data
from meteorpi_server.storage.s3 import S3FileStore, S3Unavailable

PASSWORD = "a test password"
PART = 5 * 1024 ** 2  # the smallest part S3 takes: two parts and a bit make a large file


@pytest.fixture
def bucket_store(s3_server, tmp_path) -> S3FileStore:
    return S3FileStore(f"s3://meteorpi-test/{tmp_path.name}-{secrets.token_hex(4)}",
                       s3_server.endpoint_url, staging_dir=tmp_path / "staging", part_size=PART)


def unfinished_uploads(files: S3FileStore) -> list[str]:
    reply = files.client.list_multipart_uploads(Bucket=files.bucket, Prefix=files.prefix)
    return [upload["Key"] for upload in reply.get("Uploads", [])]


def make_user(app, name: str, password: str) -> None:
    from werkzeug.security import generate_password_hash

    from meteorpi_server.storage.orm import UserRoleRow, UserRow

    with app.extensions["meteorpi"].database.write() as session:
        session.add(UserRow(name=name, created_at=0,
                            password_hash=generate_password_hash(password, "pbkdf2:sha256:1"),
                            roles=[UserRoleRow(role="import"), UserRoleRow(role="user")]))


def basic_auth(auth: tuple[str, str]) -> dict:
    return {"Authorization": "Basic " + base64.b64encode(":".join(auth).encode()).decode()}


def meteorpi(tmp_path, settings: dict, *args):
    config = tmp_path / "server.yaml"
    config.write_text(yaml.safe_dump(settings))
    return CliRunner().invoke(main, ["--config", str(config), *args])


@pytest.mark.parametrize("bucket, endpoint, expected", [
    ("no-such-bucket", None, "bucket 'no-such-bucket' does not exist; create it"),
    ("meteorpi-test", "http://127.0.0.1:9", "cannot reach the S3 server"),
], ids=["missing-bucket", "unreachable-server"])
def test_a_bucket_that_cannot_be_used_stops_the_server_in_one_line(
        s3_server, tmp_path, database_url, bucket, endpoint, expected):
    result = meteorpi(tmp_path, {"database_url": database_url,
                                 "file_store": f"s3://{bucket}/node",
                                 "s3_endpoint_url": endpoint or s3_server.endpoint_url},
                      "files", "gc")
    assert result.exit_code == 1
    assert expected in result.output
    assert len(result.output.strip().splitlines()) == 1
    assert "Traceback" not in result.output


def test_refused_credentials_say_which_settings_to_check(tmp_path, monkeypatch):
    server = seaweed.SeaweedS3(tmp_path / "secured", credentials=("meteorpi", "right-secret"))
    try:
        server.create_bucket("secured")
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", "meteorpi")
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wrong-secret")
        store = S3FileStore("s3://secured/", server.endpoint_url, staging_dir=tmp_path / "staging")
        with pytest.raises(S3Unavailable, match="access denied .*AWS_SECRET_ACCESS_KEY"):
            store.check()
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "right-secret")
        S3FileStore("s3://secured/", server.endpoint_url, staging_dir=tmp_path / "staging").check()
    finally:
        server.stop()


def test_a_large_file_is_invisible_until_its_whole_md5_matched(bucket_store):
    data = secrets.token_bytes(2 * PART + 1234)
    file_id = uuid.uuid4()
    pending = bucket_store.receive(file_id, io.BytesIO(data), md5_bytes(data))
    assert pending.upload_id is not None  # it went up in parts...
    assert not bucket_store.exists(file_id)  # ...and is not at its key yet
    bucket_store.install(pending)
    assert stored_bytes(bucket_store, file_id) == data
    assert unfinished_uploads(bucket_store) == []


def test_a_large_file_whose_md5_does_not_match_leaves_nothing_behind(bucket_store):
    data = secrets.token_bytes(2 * PART + 1)
    file_id = uuid.uuid4()
    with pytest.raises(Md5Mismatch):
        bucket_store.receive(file_id, io.BytesIO(data), md5_bytes(b"something else"))
    assert not bucket_store.exists(file_id)
    assert unfinished_uploads(bucket_store) == []


def test_a_stored_object_is_replaced_only_whole(bucket_store):
    file_id = uuid.uuid4()
    first, second = secrets.token_bytes(3 * PART), secrets.token_bytes(2 * PART + 7)
    bucket_store.write(file_id, io.BytesIO(first), md5_bytes(first))
    pending = bucket_store.receive(file_id, io.BytesIO(second), md5_bytes(second))
    assert stored_bytes(bucket_store, file_id) == first  # parts sent, not yet completed
    bucket_store.install(pending)
    assert stored_bytes(bucket_store, file_id) == second


def test_gc_removes_what_a_crash_left_in_the_bucket(bucket_store, database_url):
    # A server killed mid-upload leaves a multipart upload; one killed between publishing
    # and recording leaves an object that no row names.
    abandoned = bucket_store.client.create_multipart_upload(
        Bucket=bucket_store.bucket, Key=bucket_store.key_for(uuid.uuid4()))
    bucket_store.client.upload_part(
        Bucket=bucket_store.bucket, Key=abandoned["Key"], UploadId=abandoned["UploadId"],
        PartNumber=1, Body=b"x" * 1024)
    unindexed = uuid.uuid4()
    bucket_store.write(unindexed, io.BytesIO(b"nobody's"), md5_bytes(b"nobody's"))
    database = Database(database_url)
    try:
        result = sweep_orphan_data(database, bucket_store, older_than_seconds=-5,
                                   upload_expiry_seconds=-5, scan_disk=True)
    finally:
        database.dispose()
    assert (result.unindexed_files, result.partial_files) == (1, 1)
    assert not bucket_store.exists(unindexed)
    assert unfinished_uploads(bucket_store) == []


def test_gc_leaves_an_upload_that_is_still_receiving_parts(bucket_store):
    upload = bucket_store.client.create_multipart_upload(
        Bucket=bucket_store.bucket, Key=bucket_store.key_for(uuid.uuid4()))
    bucket_store.client.upload_part(
        Bucket=bucket_store.bucket, Key=upload["Key"], UploadId=upload["UploadId"],
        PartNumber=1, Body=b"x" * 1024)
    assert bucket_store.remove_stale_uploads(older_than_seconds=3600) == 0
    assert unfinished_uploads(bucket_store) == [upload["Key"]]


@pytest.mark.parametrize("file_store_kind", ["s3"], indirect=True)
def test_presigned_downloads_redirect_to_the_bucket(settings, file_store_kind, tmp_path):
    from meteorpi_server import create_app

    settings["s3_presigned_downloads_seconds"] = 60
    app = create_app(settings)
    try:
        dataset = factories.DataSet(tmp_path / "node")
        record = dataset.add_file(factories.status(), size=1000)
        client = app.test_client()
        auth = ("node1", PASSWORD)
        make_user(app, *auth)
        ProtocolClient(client, auth).replicate(record, dataset.statuses, dataset.contents)
        reply = client.get(f"/files/content/{record.file_id.hex}/night.jpg",
                           headers=basic_auth(auth))
        assert reply.status_code == 302
        assert reply.headers["Cache-Control"] == "no-store"
        fetched = requests.get(reply.headers["Location"], timeout=10)
        assert fetched.content == dataset.contents[record.file_id]
        assert fetched.headers["Content-Type"] == record.mime_type
        assert "night.jpg" in fetched.headers["Content-Disposition"]
    finally:
        app.extensions["meteorpi"].database.dispose()


# A server of its own to stop: once, on the database N hosts share.
@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
@pytest.mark.parametrize("file_store_kind", ["s3"], indirect=True)
def test_a_bucket_gone_mid_import_is_a_503_to_retry_not_a_500(settings, file_store_kind,
                                                              tmp_path, monkeypatch):
    from meteorpi_server import create_app

    server = seaweed.SeaweedS3(tmp_path / "going")
    server.create_bucket("going")
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
    settings.update(file_store="s3://going/", s3_endpoint_url=server.endpoint_url)
    app = create_app(settings)
    try:
        make_user(app, "node1", PASSWORD)
        server.stop()
        data = b"a night's image"
        reply = app.test_client().post(
            f"/import/data/{uuid.uuid4().hex}/{md5_bytes(data)}", headers=basic_auth(("node1", PASSWORD)),
            data={"file": (io.BytesIO(data), "image.jpg")}, content_type="multipart/form-data")
        assert reply.status_code == 503
        assert reply.get_json()["error"] == "file_store_unavailable"
        assert reply.headers["Retry-After"] == "30"
    finally:
        app.extensions["meteorpi"].database.dispose()


# A server of its own to stop: once, on the database N hosts share.
@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
@pytest.mark.parametrize("file_store_kind", ["s3"], indirect=True)
def test_readiness_says_when_the_bucket_cannot_be_reached(settings, file_store_kind, tmp_path):
    from meteorpi_server import create_app

    server = seaweed.SeaweedS3(tmp_path / "watched")
    server.create_bucket("watched")
    settings.update(file_store="s3://watched/", s3_endpoint_url=server.endpoint_url)
    app = create_app(settings)
    try:
        ready = app.test_client().get("/health/ready")
        assert ready.status_code == 200
        check = next(c for c in ready.get_json()["checks"] if c["name"] == "file_store")
        assert check["ok"] and "s3://watched/" in check["reason"]
        server.stop()
        failing = app.test_client().get("/health/ready")
        assert failing.status_code == 503
        check = next(c for c in failing.get_json()["checks"] if c["name"] == "file_store")
        assert not check["ok"] and "cannot reach the S3 server" in check["reason"]
    finally:
        server.stop()
        app.extensions["meteorpi"].database.dispose()


def test_backup_of_a_bucket_is_refused_saying_what_keeps_it_safe(s3_server, tmp_path, database_url):
    result = meteorpi(tmp_path, {"database_url": database_url, "file_store": "s3://meteorpi-test/b",
                                 "s3_endpoint_url": s3_server.endpoint_url},
                      "backup", str(tmp_path / "backup"))
    assert result.exit_code == 1
    assert "works on a local file store" in result.output
    assert "versioning or replication" in result.output
    assert not (tmp_path / "backup").exists()
