"""``meteorpi files migrate``: a running server's directory store copied into a bucket.

The server (an app on a local directory) keeps importing while the files are copied into
a prefix of its own in the session's SeaweedFS bucket; each test runs on SQLite and on
PostgreSQL.
"""
from __future__ import annotations

import secrets
import threading
import uuid

import factories
import pytest
import yaml
from click.testing import CliRunner
from protocol import ProtocolClient

from meteorpi_model import md5_bytes
from meteorpi_server import create_app
from meteorpi_server.cli import main
from meteorpi_server.storage import migrate as migration
from meteorpi_server.storage.files import FileStore
from meteorpi_server.storage.s3 import S3FileStore

# The app under test reads and writes a directory; the bucket is only the migration's.
pytestmark = pytest.mark.local_store_only

PART = 5 * 1024 ** 2  # the smallest part S3 takes: a file larger than it is multipart


@pytest.fixture
def bucket_url(s3_server, tmp_path) -> str:
    return f"s3://meteorpi-test/{tmp_path.name}-{secrets.token_hex(4)}"


@pytest.fixture
def bucket(s3_server, bucket_url, tmp_path) -> S3FileStore:
    return S3FileStore(bucket_url, s3_server.endpoint_url, staging_dir=tmp_path / "staging",
                       part_size=PART)


@pytest.fixture
def directory(settings) -> FileStore:
    return FileStore(settings["file_store"])


@pytest.fixture
def node(client, exporter_auth):
    return ProtocolClient(client, exporter_auth)


@pytest.fixture
def dataset(tmp_path, node):
    """An event of three files, a stand-alone file and a multipart-sized one, imported."""
    data = factories.DataSet(tmp_path / "node")
    camera = factories.status()
    entities = [data.add_event(camera, 3), data.add_file(camera),
                data.add_file(camera, size=PART + 1000, time_ms=factories.NIGHT + 9000)]
    for entity in entities:
        assert node.replicate(entity, data.statuses, data.contents)[-1] == "complete"
    return data


@pytest.fixture
def cli_settings(settings, s3_server, tmp_path) -> dict:
    """The server's settings (a directory store) with the bucket's server beside them."""
    return {**settings, "s3_endpoint_url": s3_server.endpoint_url,
            "s3_staging_dir": str(tmp_path / "staging")}


def run(services, directory, bucket, **options) -> migration.MigrateResult:
    return migration.migrate(services.database, directory, bucket, **options)


def in_bucket(bucket: S3FileStore, file_id: uuid.UUID) -> bytes | None:
    if bucket.stat(file_id) is None:
        return None
    with bucket.open(file_id) as reader:
        return reader.read()


def meteorpi(tmp_path, settings: dict, *args):
    config = tmp_path / "server.yaml"
    config.write_text(yaml.safe_dump(settings))
    return CliRunner().invoke(main, ["--config", str(config), *args])


def test_every_file_is_copied_byte_identical_and_a_second_run_copies_nothing(
        services, directory, bucket, dataset):
    unindexed = uuid.uuid4()  # what a crash between renaming and recording leaves
    directory.path_for(unindexed).parent.mkdir(parents=True, exist_ok=True)
    directory.path_for(unindexed).write_bytes(b"no row names me")

    first = run(services, directory, bucket)

    assert (first.copied, first.present, first.unindexed, first.failed) == (5, 0, 1, 0)
    assert first.copied_bytes == sum(len(data) for data in dataset.contents.values())
    for file_id, data in dataset.contents.items():
        assert in_bucket(bucket, file_id) == data
        head = bucket.client.head_object(Bucket=bucket.bucket, Key=bucket.key_for(file_id))
        assert head["Metadata"]["md5"] == md5_bytes(data)
    assert bucket.stat(unindexed) is None

    second = run(services, directory, bucket)
    assert (second.copied, second.present, second.unindexed, second.failed) == (0, 5, 1, 0)

    def refused(**_):
        raise ConnectionError("listing refused")

    bucket.client.list_objects_v2 = refused  # then each object is looked at on its own
    third = run(services, directory, bucket)
    assert (third.copied, third.present, third.failed) == (0, 5, 0)


def test_an_object_with_other_bytes_is_copied_again(services, directory, bucket, dataset):
    file_id = next(iter(dataset.contents))
    bucket.client.put_object(Bucket=bucket.bucket, Key=bucket.key_for(file_id), Body=b"stale",
                             Metadata={"md5": md5_bytes(b"stale")})
    other = list(dataset.contents)[1]
    bucket.client.put_object(Bucket=bucket.bucket, Key=bucket.key_for(other), Body=b"no md5")

    result = run(services, directory, bucket)

    assert (result.copied, result.present, result.failed) == (5, 0, 0)
    assert in_bucket(bucket, file_id) == dataset.contents[file_id]
    assert in_bucket(bucket, other) == dataset.contents[other]


def fail_at(monkeypatch, call: int, error: BaseException) -> None:
    """The ``call``-th publication of an object raises ``error`` (a crash, or Ctrl-C)."""
    install = S3FileStore.install
    calls = []
    lock = threading.Lock()

    def failing(self, pending):
        with lock:
            calls.append(pending.stored.file_id)
            failing_now = len(calls) == call
        if failing_now:
            raise error
        return install(self, pending)

    monkeypatch.setattr(S3FileStore, "install", failing)


def test_an_interrupted_run_is_completed_by_the_next(
        services, directory, bucket, dataset, monkeypatch):
    fail_at(monkeypatch, 3, KeyboardInterrupt())

    first = run(services, directory, bucket, jobs=1)

    assert first.interrupted and first.failed == 0
    assert first.copied == 2
    assert "interrupted: run the same command again" in first.summary()
    assert not bucket.client.list_multipart_uploads(
        Bucket=bucket.bucket, Prefix=bucket.prefix).get("Uploads")
    monkeypatch.undo()

    second = run(services, directory, bucket)

    assert (second.copied, second.present, second.failed) == (3, 2, 0)
    assert not second.interrupted
    for file_id, data in dataset.contents.items():
        assert in_bucket(bucket, file_id) == data


def test_an_upload_that_fails_is_reported_and_copied_by_the_next_run(
        services, directory, bucket, dataset, monkeypatch):
    fail_at(monkeypatch, 2, ConnectionError("the bucket went away\nsecond line"))

    first = run(services, directory, bucket)

    assert (first.copied, first.failed) == (4, 1)
    [(file_id, reason)] = first.errors
    assert reason == "the bucket went away"
    assert first.problems == [f"file {file_id.hex}: the bucket went away"]
    assert bucket.stat(file_id) is None
    monkeypatch.undo()

    second = run(services, directory, bucket)
    assert (second.copied, second.present, second.failed) == (1, 4, 0)
    assert in_bucket(bucket, file_id) == dataset.contents[file_id]


def test_a_file_imported_while_migrate_runs_is_copied_by_the_next_run(
        services, directory, bucket, dataset, node, monkeypatch):
    # An id before every other: rows are read in id order, so this run has passed it.
    camera, data = factories.status(), factories.file_bytes(3000, seed=7)
    late = factories.file_record(camera, data, file_id=uuid.UUID(int=1))
    dataset.statuses[camera.status_id], dataset.contents[late.file_id] = camera, data
    install = S3FileStore.install
    imported = threading.Event()

    def importing_first(self, pending):
        if not imported.is_set():
            imported.set()
            assert node.replicate(late, dataset.statuses, dataset.contents)[-1] == "complete"
        return install(self, pending)

    monkeypatch.setattr(S3FileStore, "install", importing_first)
    first = run(services, directory, bucket, jobs=1)
    assert imported.is_set() and (first.copied, first.failed) == (5, 0)
    monkeypatch.undo()

    second = run(services, directory, bucket)

    assert (second.copied, second.present, second.failed) == (1, 5, 0)
    assert in_bucket(bucket, late.file_id) == dataset.contents[late.file_id]


def test_bytes_replaced_while_on_their_way_are_not_published_over_the_new_ones(
        services, directory, bucket, node, monkeypatch):
    # Bytes waiting for their record may be replaced (an exporter that sent the wrong ones).
    file_id, old, new = uuid.uuid4(), b"first bytes" * 100, b"second bytes" * 100
    node.upload(file_id, old)
    receive = S3FileStore.receive

    def replaced_meanwhile(self, file_id, source, expected_md5, max_bytes=None):
        pending = receive(self, file_id, source, expected_md5, max_bytes)
        if expected_md5 == md5_bytes(old):
            node.upload(file_id, new)
        return pending

    monkeypatch.setattr(S3FileStore, "receive", replaced_meanwhile)
    result = run(services, directory, bucket)

    assert (result.copied, result.failed, result.copied_bytes) == (1, 0, len(new))
    assert in_bucket(bucket, file_id) == new


def test_a_file_changed_on_disk_is_reported_not_copied_and_the_command_fails(
        cli_settings, services, directory, bucket_url, bucket, dataset, tmp_path):
    file_id = dataset.events[0].files[1].file_id
    path = directory.path_for(file_id)
    damaged = bytearray(path.read_bytes())
    damaged[100] ^= 0xFF
    path.write_bytes(bytes(damaged))

    result = meteorpi(tmp_path, cli_settings, "files", "migrate", "--to", bucket_url, "--quiet")

    assert result.exit_code == 1, result.output
    expected, actual = md5_bytes(dataset.contents[file_id]), md5_bytes(bytes(damaged))
    assert (f"PROBLEM: file {file_id.hex}: bytes on disk have md5 {actual}, the index says "
            f"{expected}") in result.output
    assert "copied 4 files" in result.output and "1 failed" in result.output
    assert bucket.stat(file_id) is None
    assert all(in_bucket(bucket, other) == data
               for other, data in dataset.contents.items() if other != file_id)


def test_files_stored_up_to_the_switch_are_copied_by_the_run_after_it_and_served_from_the_bucket(
        cli_settings, services, directory, bucket_url, bucket, dataset, node, tmp_path,
        make_user):
    settings = cli_settings
    first = meteorpi(tmp_path, settings, "files", "migrate", "--to", bucket_url)
    assert first.exit_code == 0, first.output
    assert "copied 5 files (" in first.output and f"to {bucket_url}" in first.output
    # Stored after the first run, before the server is switched to the bucket.
    late = dataset.add_file(factories.status(), size=3000, time_ms=factories.NIGHT + 20_000)
    assert node.replicate(late, dataset.statuses, dataset.contents)[-1] == "complete"
    assert bucket.stat(late.file_id) is None

    switched = {**settings, "file_store": bucket_url, "cache_dir": str(tmp_path / "cache")}
    second = meteorpi(tmp_path, switched, "files", "migrate", "--from", settings["file_store"],
                      "--to", bucket_url)
    assert second.exit_code == 0, second.output
    assert "copied 1 files" in second.output and "5 already there" in second.output

    app = create_app(switched)
    try:
        reader = make_user("reader", "user")
        client = app.test_client()
        for file_id, data in dataset.contents.items():
            reply = client.get(f"/files/content/{file_id.hex}", auth=reader)
            assert reply.status_code == 200, file_id
            assert reply.data == data
    finally:
        app.extensions["meteorpi"].database.dispose()


def test_without_from_a_bucket_file_store_asks_for_the_old_directory(
        cli_settings, bucket_url, tmp_path):
    switched = {**cli_settings, "file_store": bucket_url}
    result = meteorpi(tmp_path, switched, "files", "migrate", "--to", bucket_url)
    assert result.exit_code == 1
    assert result.output == (f"Error: file_store is already the bucket {bucket_url}: give the "
                             "directory the server used before with --from DIR\n")


@pytest.mark.parametrize("make_source, expected", [
    (lambda tmp: tmp / "nowhere", "no such directory"),
    (lambda tmp: tmp, "is not a directory file store: it has no shard directories"),
    (lambda tmp: "s3://meteorpi-test/old", "is a bucket: migrate copies from a directory"),
], ids=["missing", "not-a-store", "a-bucket"])
def test_a_from_that_is_not_a_directory_store_is_one_line(
        cli_settings, bucket_url, tmp_path, make_source, expected):
    (tmp_path / "notes.txt").write_text("not a file store")
    result = meteorpi(tmp_path, cli_settings, "files", "migrate", "--from",
                      str(make_source(tmp_path)), "--to", bucket_url)
    assert result.exit_code == 1
    assert expected in result.output
    assert len(result.output.strip().splitlines()) == 1


def test_a_bucket_that_cannot_be_used_is_one_line(cli_settings, directory, tmp_path):
    directory.root.mkdir(parents=True)
    result = meteorpi(tmp_path, cli_settings, "files", "migrate", "--to", "s3://no-such-bucket/x")
    assert result.exit_code == 1
    assert "bucket 'no-such-bucket' does not exist; create it" in result.output
    assert len(result.output.strip().splitlines()) == 1
