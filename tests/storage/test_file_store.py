"""The file store shows a file only once it is complete, fsynced and verified."""
from __future__ import annotations

import io
import uuid

import pytest

from meteorpi_model import md5_bytes
from meteorpi_server.storage.files import FileStore, Md5Mismatch, TooLarge

DATA = bytes(range(256)) * 5000  # a little over 1 MiB: several read pieces


@pytest.fixture
def files(tmp_path):
    return FileStore(tmp_path / "files")


def leftovers(files):
    return [path.name for path in files.root.rglob("*") if path.is_file()]


def test_a_verified_file_appears_at_its_path(files):
    file_id = uuid.uuid4()
    stored = files.write(file_id, io.BytesIO(DATA), md5_bytes(DATA))
    assert (stored.md5, stored.size) == (md5_bytes(DATA), len(DATA))
    assert files.path_for(file_id).read_bytes() == DATA
    assert files.path_for(file_id).name == file_id.hex
    assert leftovers(files) == [file_id.hex]


def test_bytes_with_the_wrong_md5_leave_nothing(files):
    file_id = uuid.uuid4()
    with pytest.raises(Md5Mismatch):
        files.write(file_id, io.BytesIO(DATA), md5_bytes(b"other"))
    assert not files.exists(file_id)
    assert leftovers(files) == []


def test_a_file_over_the_limit_leaves_nothing(files):
    with pytest.raises(TooLarge):
        files.write(uuid.uuid4(), io.BytesIO(DATA), md5_bytes(DATA), max_bytes=1000)
    assert leftovers(files) == []


class DropsMidway(io.RawIOBase):
    """A source that fails after some bytes, like a connection cut mid-upload."""

    def __init__(self):
        self.calls = 0

    def read(self, size=-1):
        self.calls += 1
        if self.calls > 1:
            raise ConnectionResetError("peer went away")
        return DATA[: 1 << 20]


def test_a_source_that_fails_midway_leaves_nothing(files):
    file_id = uuid.uuid4()
    with pytest.raises(ConnectionResetError):
        files.write(file_id, DropsMidway(), md5_bytes(DATA))
    assert leftovers(files) == []


def test_a_failed_rewrite_keeps_the_complete_file(files):
    file_id = uuid.uuid4()
    files.write(file_id, io.BytesIO(DATA), md5_bytes(DATA))
    with pytest.raises(Md5Mismatch):
        files.write(file_id, io.BytesIO(b"bad"), md5_bytes(b"good"))
    assert files.path_for(file_id).read_bytes() == DATA


def test_idle_unfinished_uploads_are_removed_and_active_ones_kept(files):
    import fcntl
    import os

    files.uploads.mkdir(parents=True)
    idle, fresh, locked = (files.uploads / name for name in ("idle", "fresh", "locked"))
    for path in (idle, fresh, locked):
        path.write_bytes(b"some bytes")
    os.utime(idle, (0, 0))
    os.utime(locked, (0, 0))
    with open(locked, "rb") as writer:  # an upload in progress, however slow, holds its lock
        fcntl.flock(writer.fileno(), fcntl.LOCK_EX)
        assert files.remove_stale_uploads(older_than_seconds=3600) == 1
    assert sorted(leftovers(files)) == ["fresh", "locked"]


class SweptWhileSending(io.RawIOBase):
    """A sender so slow that its upload looks idle: between its two pieces the temporary
    file is aged past the expiry and the stale-upload sweep runs."""

    def __init__(self, files):
        self.files = files
        self.calls = 0
        self.removed = None

    def read(self, size=-1):
        import os

        self.calls += 1
        if self.calls == 1:
            return DATA[: 1 << 20]
        if self.calls == 2:
            for path in self.files.uploads.iterdir():
                os.utime(path, (0, 0))
            self.removed = self.files.remove_stale_uploads(older_than_seconds=3600)
            return DATA[1 << 20:]
        return b""


def test_a_whole_file_upload_in_progress_is_never_swept_away(files):
    file_id = uuid.uuid4()
    source = SweptWhileSending(files)
    files.write(file_id, source, md5_bytes(DATA))
    assert source.removed == 0
    assert files.path_for(file_id).read_bytes() == DATA
    assert leftovers(files) == [file_id.hex]


@pytest.mark.parametrize("syncfs", ["syncfs", "fsync fallback"])
def test_a_group_shows_its_files_only_once_committed(files, monkeypatch, syncfs):
    from meteorpi_server.storage import files as files_module

    if syncfs != "syncfs":
        monkeypatch.setattr(files_module, "_SYNCFS", None)
    group = files.group()
    first, second, wrong = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    group.write(first, io.BytesIO(DATA), md5_bytes(DATA))
    group.write(second, io.BytesIO(b"small"), md5_bytes(b"small"))
    with pytest.raises(Md5Mismatch):
        group.write(wrong, io.BytesIO(b"bad"), md5_bytes(b"good"))
    assert not files.exists(first) and not files.exists(second)  # verified, not yet durable
    committed = group.commit()
    assert [(f.file_id, f.size) for f in committed] == [(first, len(DATA)), (second, 5)]
    assert files.path_for(first).read_bytes() == DATA
    assert files.path_for(second).read_bytes() == b"small"
    assert not files.exists(wrong)
    assert sorted(leftovers(files)) == sorted([first.hex, second.hex])


def test_an_upload_appended_to_between_the_sweeps_look_and_its_lock_is_kept(files, monkeypatch):
    import os

    from meteorpi_server.storage import files as files_module

    files.uploads.mkdir(parents=True)
    partial = files.uploads / "partial"
    partial.write_bytes(b"acknowledged chunk")
    os.utime(partial, (0, 0))
    real_scandir = os.scandir

    def look_then_append(path):
        for entry in real_scandir(path):
            entry.stat()  # the sweep's look: idle for ever (a DirEntry keeps what it saw)
            with open(entry.path, "ab") as upload:  # then a chunk lands and is acknowledged
                upload.write(b" and the next one")
            yield entry

    monkeypatch.setattr(files_module.os, "scandir", look_then_append)
    assert files.remove_stale_uploads(older_than_seconds=3600) == 0
    assert partial.read_bytes() == b"acknowledged chunk and the next one"
