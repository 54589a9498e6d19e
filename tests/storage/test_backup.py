"""``meteorpi backup`` while records arrive, and ``meteorpi restore`` into an empty place.

Each test runs on SQLite and on PostgreSQL (``make_node`` uses the test's database).
"""
from __future__ import annotations

import datetime
import io
import secrets
import threading
import uuid

import pytest
import yaml
from click.testing import CliRunner
from export_nodes import extra_postgres_databases, make_node, node_database  # noqa: F401
from sqlalchemy import create_engine, select, text
from sqlalchemy.engine import make_url

from meteorpi_model import md5_bytes
from meteorpi_server import create_app
from meteorpi_server.cli import main
from meteorpi_server.config import Config
from meteorpi_server.node.demo import DemoPlan, generate
from meteorpi_server.storage import backup as backups
from meteorpi_server.storage import store
from meteorpi_server.storage.blobs import Blobs
from meteorpi_server.storage.db import Database
from meteorpi_server.storage.files import FileStore
from meteorpi_server.storage.orm import (
    CameraStatusRow,
    EventRow,
    FileRecordRow,
    StoredBlobRow,
)

NIGHT = DemoPlan(cameras=1, nights=1, events_per_night=3, files_per_event=2, standalone_files=1,
                 file_size=4000, first_night=datetime.date(2026, 11, 1))


def more_nights(first: int) -> DemoPlan:
    """A small night of one camera, a different night each time (``first`` days on)."""
    return DemoPlan(cameras=1, nights=1, events_per_night=2, files_per_event=2,
                    standalone_files=1, file_size=3000,
                    first_night=datetime.date(2026, 11, 2) + datetime.timedelta(days=first))


@pytest.fixture
def source(make_node):
    node = make_node("source")
    generate(node.recorder, NIGHT)
    return node


@pytest.fixture
def empty_place(database_url, tmp_path):
    """Settings naming a database that does not exist yet (SQLite) or a new, empty one
    (PostgreSQL, dropped at the end), and a file store that does not exist."""
    files = str(tmp_path / "restored" / "files")
    if database_url.startswith("sqlite"):
        yield {"database_url": f"sqlite:///{tmp_path / 'restored' / 'meteorpi.db'}",
               "file_store": files}
        return
    name = f"{make_url(database_url).database}_restore_{secrets.token_hex(3)}"
    admin = create_engine(make_url(database_url).set(database="postgres"),
                          isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(f'CREATE DATABASE "{name}"'))
    url = make_url(database_url).set(database=name).render_as_string(hide_password=False)
    try:
        yield {"database_url": url, "file_store": files}
    finally:
        with admin.connect() as connection:
            connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def config_file(path, settings: dict) -> str:
    path.write_text(yaml.safe_dump({**settings, "log_level": "warning"}))
    return str(path)


def run(config: str, *arguments):
    return CliRunner().invoke(main, ["--config", config, *arguments], catch_exceptions=False)


def record_ids(database: Database) -> dict[str, set[uuid.UUID]]:
    with database.read() as session:
        return {"statuses": set(session.scalars(select(CameraStatusRow.status_id))),
                "events": set(session.scalars(select(EventRow.event_id))),
                "files": set(session.scalars(select(FileRecordRow.file_id)))}


class RecordingLoop:
    """Records a small night after another in a thread until stopped, as a camera does."""

    def __init__(self, node):
        self.node, self.nights, self.error = node, 0, None
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        try:
            while not self.stop.is_set():
                generate(self.node.recorder, more_nights(self.nights))
                self.nights += 1
        except BaseException as error:  # reported by the test
            self.error = error

    def __enter__(self):
        self.thread.start()
        while self.nights == 0 and self.error is None:  # records are arriving
            self.stop.wait(0.01)
        return self

    def __exit__(self, *_):
        self.stop.set()
        self.thread.join(60)
        assert self.error is None, self.error


def test_a_backup_taken_while_records_arrive_restores_every_record_it_holds_with_verified_bytes(
        source, empty_place, tmp_path, monkeypatch):
    before = record_ids(source.services.database)
    backup_dir = tmp_path / "backup"
    copy_blob = backups._copy_blob
    waited = []

    def after_more_records(*arguments):
        # Between the database copy and the copying of bytes, more records certainly arrive.
        if not waited:
            waited.append(loop.nights)
            while loop.nights < waited[0] + 1 and loop.error is None:
                loop.stop.wait(0.01)
        return copy_blob(*arguments)

    monkeypatch.setattr(backups, "_copy_blob", after_more_records)
    with RecordingLoop(source) as loop:
        result = run(config_file(tmp_path / "source.yaml", source.settings), "backup",
                     str(backup_dir))
    assert result.exit_code == 0, result.output
    assert "backed up the database" in result.output
    summary = backups.read_summary(backup_dir)
    # What arrived after the copy is in the source but not in the backup.
    assert summary["records"]["events"] < len(record_ids(source.services.database)["events"])

    result = run(config_file(tmp_path / "restored.yaml", empty_place), "restore", str(backup_dir))
    assert result.exit_code == 0, result.output
    records = summary["records"]
    assert (f"restored {sum(records.values())} records ({records['statuses']} statuses, "
            f"{records['events']} events, {records['files']} files) and {summary['files']} "
            "files") in result.output

    app = create_app(Config.from_mapping({**empty_place, "read_access": "public"}))
    services = app.extensions["meteorpi"]
    try:
        restored = record_ids(services.database)
        assert {name: len(ids) for name, ids in restored.items()} == records
        # Everything stored before the backup began is there, and records that arrived
        # during it are there whole or not at all.
        assert all(before[name] <= restored[name] for name in before)
        assert len(restored["events"]) > len(before["events"])
        with services.database.read() as session:
            blobs = dict(session.execute(select(StoredBlobRow.file_id, StoredBlobRow.md5)).all())
            for event_id in restored["events"]:
                event = store.get_event(session, event_id)
                assert {record.file_id for record in event.files} <= restored["files"]
            expected = {file_id: store.get_file_record(session, file_id).md5
                        for file_id in restored["files"]}
        # Every record's bytes; other rows are bytes whose record was not yet stored at
        # the copy (waiting for it, as they were on the source).
        assert {file_id: blobs.get(file_id) for file_id in expected} == expected
        for file_id, md5 in blobs.items():
            assert md5_bytes(services.files.path_for(file_id).read_bytes()) == md5
        client = app.test_client()
        for file_id, md5 in expected.items():
            reply = client.get(f"/files/content/{file_id.hex}")
            assert reply.status_code == 200
            assert md5_bytes(reply.data) == md5
        reply = client.get("/events", query_string={"limit": 10000})
        assert reply.status_code == 200
        served = {uuid.UUID(event["event_id"]) for event in reply.json["events"]}
        assert served == restored["events"]
    finally:
        services.database.dispose()


def test_backup_refuses_a_directory_that_is_not_empty(source, tmp_path):
    backup_dir = tmp_path / "backup"
    backup_dir.mkdir()
    (backup_dir / "last-week.txt").write_text("something else")
    result = run(config_file(tmp_path / "source.yaml", source.settings), "backup", str(backup_dir))
    assert result.exit_code == 1
    assert result.output == (f"Error: {backup_dir} is not empty: back up into a new or empty "
                             "directory\n")
    assert sorted(path.name for path in backup_dir.iterdir()) == ["last-week.txt"]


def test_restore_refuses_a_database_or_a_file_store_that_is_not_empty(
        source, empty_place, tmp_path):
    backup_dir = tmp_path / "backup"
    assert run(config_file(tmp_path / "source.yaml", source.settings), "backup",
               str(backup_dir)).exit_code == 0
    # Into the very server that was backed up: its database holds records.
    result = run(config_file(tmp_path / "over.yaml", {**source.settings,
                                                      "file_store": str(tmp_path / "new-files")}),
                 "restore", str(backup_dir))
    assert result.exit_code == 1
    assert result.output.startswith("Error: the database ") and result.output.count("\n") == 1
    assert "is not empty" in result.output and "restore into a new, empty database" in result.output

    # An empty database, but a file store with files in it.
    store_root = tmp_path / "restored" / "files"
    (store_root / "ab").mkdir(parents=True)
    (store_root / "ab" / ("ab" + "0" * 30)).write_bytes(b"someone's file")
    result = run(config_file(tmp_path / "restored.yaml", empty_place), "restore", str(backup_dir))
    assert result.exit_code == 1
    assert result.output == (f"Error: the file store {store_root} is not empty: restore into a "
                             "new, empty directory\n")
    database = Database(empty_place["database_url"])
    try:
        assert database.current_revision() is None  # nothing was restored
    finally:
        database.dispose()

    # A directory that holds no finished backup.
    (tmp_path / "half").mkdir()
    result = run(config_file(tmp_path / "restored.yaml", empty_place), "restore",
                 str(tmp_path / "half"))
    assert result.exit_code == 1
    assert "holds no finished backup" in result.output


@pytest.mark.parametrize("link", [True, False], ids=["hard-links", "copies"])
def test_bytes_changed_after_the_database_copy_are_reported_not_copied(
        source, empty_place, tmp_path, monkeypatch, link):
    with source.services.database.read() as session:
        victim = session.scalars(select(FileRecordRow.file_id).limit(1)).one()
    # Bytes waiting for a record that never comes: the sweep may take them at any time.
    waiting = uuid.uuid4()
    Blobs(source.services.database, source.services.files).write(
        waiting, io.BytesIO(b"waiting for its record"), md5_bytes(b"waiting for its record"))

    read_copy = backups._read_copy

    def then_meddle(session):
        found = read_copy(session)
        # After the database copy, before the bytes are copied: a file a record relies on
        # is changed in place (which the store never does), and the waiting bytes are swept.
        with open(source.services.files.path_for(victim), "r+b") as handle:
            handle.write(b"rot")
        source.services.files.remove(waiting)
        return found

    monkeypatch.setattr(backups, "_read_copy", then_meddle)
    backup_dir = tmp_path / "backup"
    result = backups.backup(source.services.database, source.services.files, backup_dir,
                            link=link)
    assert result.changed == [victim] and result.missing == []
    assert result.skipped == [waiting]
    assert result.problems == [(f"file {victim.hex}: bytes on disk no longer match the md5 "
                                "in the database (changed in place after they were stored); "
                                "not backed up")]
    assert not (backup_dir / "files" / victim.hex[:2] / victim.hex).exists()
    manifest = (backup_dir / "manifest.tsv").read_text()
    assert victim.hex not in manifest and waiting.hex not in manifest
    assert backups.read_summary(backup_dir)["problems"] == result.problems

    # Restoring says which record lacks its bytes; the swept bytes' row is not restored.
    database = Database(empty_place["database_url"])
    try:
        restored = backups.restore(database, FileStore(empty_place["file_store"]),
                                   backup_dir)
        assert restored.problems == [f"file record {victim.hex}: its bytes are not in the backup"]
        with database.read() as session:
            assert store.known_blob_ids(session, [victim, waiting]) == set()
    finally:
        database.dispose()


def test_the_command_fails_when_a_backup_has_problems(source, tmp_path):
    with source.services.database.read() as session:
        victim = session.scalars(select(FileRecordRow.file_id).limit(1)).one()
    source.services.files.path_for(victim).write_bytes(b"overwritten in place")
    result = CliRunner().invoke(
        main, ["--config", config_file(tmp_path / "source.yaml", source.settings), "backup",
               str(tmp_path / "backup")])
    assert result.exit_code == 1
    assert f"PROBLEM: file {victim.hex}: bytes on disk no longer match" in result.stderr


def test_where_hard_links_fail_the_files_are_copied_and_links_not_tried_again(
        source, tmp_path, monkeypatch):
    import errno
    import os

    tries = []

    def no_links(*_):
        tries.append(1)
        raise OSError(errno.EXDEV, "Invalid cross-device link")

    monkeypatch.setattr(os, "link", no_links)
    result = backups.backup(source.services.database, source.services.files, tmp_path / "b")
    assert result.problems == [] and result.linked == 0
    assert result.files == len(record_ids(source.services.database)["files"]) and len(tries) == 1
    for line in (tmp_path / "b" / "manifest.tsv").read_text().splitlines()[1:]:
        file_id, md5, _ = line.split("\t")
        assert md5_bytes((tmp_path / "b" / "files" / file_id[:2] / file_id).read_bytes()) == md5
