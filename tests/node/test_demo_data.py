"""``meteorpi demo-data`` and the Recorder it writes through, as a camera node would."""
from __future__ import annotations

import random
import struct
import zlib

import factories
import pytest
import yaml
from click.testing import CliRunner
from sqlalchemy import func, select

from meteorpi_model import md5_bytes
from meteorpi_server.cli import main
from meteorpi_server.node.demo import PngMaker, parse_size
from meteorpi_server.node.recording import Recorder, RecordingError
from meteorpi_server.storage import store
from meteorpi_server.storage.orm import (
    CameraStatusRow,
    EventMetaRow,
    EventRow,
    FileMetaRow,
    FileRecordRow,
)


@pytest.fixture
def config_file(tmp_path, settings):
    path = tmp_path / "node.yaml"
    path.write_text(yaml.safe_dump(settings))
    return path


def test_demo_data_records_what_it_was_asked_for(config_file, services):
    result = CliRunner().invoke(main, [
        "--config", str(config_file), "demo-data", "--cameras", "2", "--nights", "3",
        "--events-per-night", "4", "--files-per-event", "3", "--standalone-files", "2",
        "--file-size", "3KiB", "--first-night", "2026-11-01"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    # Each camera is re-aimed at midnight on the third night: one more status each.
    assert "recorded 8 statuses, 24 events with 72 files, 12 stand-alone files (252.0 KiB)" in result.output
    with services.database.read() as session:
        assert store.count_rows(session) == {"statuses": 8, "events": 24, "files": 84, "blobs": 84}
        sizes = set(session.scalars(select(FileRecordRow.file_size)))
        meta_types = set(session.scalars(select(EventMetaRow.value_type))) | set(
            session.scalars(select(FileMetaRow.value_type)))
        provenance = session.execute(select(EventRow.imported_by, EventRow.origin_server)).all()
    assert sizes == {3 * 1024}
    assert meta_types == {"string", "number", "date"}
    assert set(provenance) == {(None, None)}, "demo data is the node's own"


def test_statuses_change_over_time_and_cover_their_records(config_file, services):
    CliRunner().invoke(main, ["--config", str(config_file), "demo-data", "--cameras", "1",
                              "--nights", "3", "--events-per-night", "5", "--file-size", "100"])
    with services.database.read() as session:
        statuses = [store.status_from_row(row) for row in session.scalars(
            select(CameraStatusRow).order_by(CameraStatusRow.valid_from))]
        events = [store.event_from_row(row) for row in session.scalars(select(EventRow))]
    assert len(statuses) == 4
    for earlier, later in zip(statuses, statuses[1:]):
        assert earlier.valid_to == later.valid_from
        assert earlier.orientation != later.orientation
    assert statuses[-1].valid_to is None, "the camera's current status is open-ended"
    by_id = {status.status_id: status for status in statuses}
    for event in events:
        status = by_id[event.status_id]
        assert status.valid_from <= event.event_time < (status.valid_to or 2**53)


def test_running_demo_data_twice_leaves_each_camera_one_current_status(config_file, services):
    arguments = ["--config", str(config_file), "demo-data", "--cameras", "2", "--nights", "2",
                 "--events-per-night", "1", "--file-size", "100", "--first-night", "2026-11-01"]
    for _ in range(2):
        assert CliRunner().invoke(main, arguments).exit_code == 0
    with services.database.read() as session:
        statuses = [store.status_from_row(row) for row in session.scalars(select(CameraStatusRow))]
    for camera_id in ("demo-cam-1", "demo-cam-2"):
        current = [status for status in statuses
                   if status.camera_id == camera_id and status.valid_to is None]
        assert len(current) == 1, "the second run's status replaced the first's"
        # The first run's last status ended where the second run's began.
        ended = [status for status in statuses if status.camera_id == camera_id
                 and status.valid_from == current[0].valid_from and status.valid_to is not None]
        assert [status.valid_to for status in ended] == [current[0].valid_from]


def test_the_file_bytes_are_stored_and_verified(config_file, services):
    CliRunner().invoke(main, ["--config", str(config_file), "demo-data", "--cameras", "1",
                              "--events-per-night", "2", "--file-size", "5000"])
    with services.database.read() as session:
        records = [store.file_record_from_row(row) for row in session.scalars(select(FileRecordRow))]
    for record in records:
        data = services.files.path_for(record.file_id).read_bytes()
        assert len(data) == 5000 and md5_bytes(data) == record.md5
        width, height = png_dimensions(data)
        assert width * height > 1, "a picture, not just padding"


def png_dimensions(data: bytes) -> tuple[int, int]:
    """Check ``data`` is a whole, valid 8-bit greyscale PNG as a viewer reads it: signature,
    chunks with good CRCs, IHDR first, IEND last, and image data that inflates to exactly
    the rows the header promises. Returns (width, height)."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    position, chunks = 8, []
    while position < len(data):
        length, kind = struct.unpack(">I4s", data[position:position + 8])
        body = data[position + 8:position + 8 + length]
        (crc,) = struct.unpack(">I", data[position + 8 + length:position + 12 + length])
        assert len(body) == length and crc == zlib.crc32(kind + body), f"bad {kind} chunk"
        chunks.append((kind, body))
        position += 12 + length
    assert position == len(data)
    kinds = [kind for kind, _ in chunks]
    assert kinds[0] == b"IHDR" and kinds[-1] == b"IEND" and b"IDAT" in kinds
    assert all(kind[0:1].islower() for kind in kinds if kind not in (b"IHDR", b"IDAT", b"IEND")), \
        "every other chunk is ancillary, so viewers skip it"
    width, height, depth, colour, _, _, interlace = struct.unpack(">IIBBBBB", chunks[0][1])
    assert (depth, colour, interlace) == (8, 0, 0)
    pixels = zlib.decompress(b"".join(body for kind, body in chunks if kind == b"IDAT"))
    assert len(pixels) == height * (width + 1)
    assert all(pixels[row * (width + 1)] == 0 for row in range(height)), "filter type none"
    return width, height


@pytest.mark.parametrize("size", [79, 100, 500, 3000, 64 * 1024, 300 * 1024, 3 * 1024 ** 2])
def test_demo_images_are_valid_pngs_of_the_size_asked_for(tmp_path, size):
    path = tmp_path / "image.png"
    assert PngMaker(random.Random(size)).write(path, size) == size
    data = path.read_bytes()
    assert len(data) == size
    png_dimensions(data)


@pytest.mark.parametrize("size", [0, 1, 50, 78])
def test_a_size_below_the_smallest_png_gives_the_smallest_png(tmp_path, size):
    path = tmp_path / "image.png"
    assert PngMaker(random.Random(1)).write(path, size) == 67
    assert png_dimensions(path.read_bytes()) == (1, 1)


def test_demo_images_differ_from_each_other(tmp_path):
    maker = PngMaker(random.Random(3))
    contents = set()
    for index in range(5):
        maker.write(tmp_path / f"{index}.png", 2000)
        contents.add((tmp_path / f"{index}.png").read_bytes())
    assert len(contents) == 5


def test_without_a_terminal_progress_is_a_few_lines_not_a_bar(config_file):
    result = CliRunner().invoke(main, ["--config", str(config_file), "demo-data", "--cameras", "2",
                                       "--nights", "2", "--events-per-night", "1",
                                       "--file-size", "100", "--first-night", "2026-11-01"])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[:4] == [f"{done}/4 camera nights: {done} events, {2 * done} stand-alone files"
                         for done in range(1, 5)]
    assert lines[4].startswith("recorded 4 statuses") and len(lines) == 5


def test_demo_data_for_earlier_nights_leaves_each_camera_one_current_status(config_file, services):
    def run(first_night):
        arguments = ["--config", str(config_file), "demo-data", "--cameras", "2", "--nights", "4",
                     "--events-per-night", "1", "--standalone-files", "0", "--file-size", "100",
                     "--first-night", first_night]
        assert CliRunner().invoke(main, arguments).exit_code == 0

    run("2026-11-10")
    run("2026-11-01")  # all before what is there already
    run("2026-11-08")  # overlapping its end
    with services.database.read() as session:
        statuses = [store.status_from_row(row) for row in session.scalars(select(CameraStatusRow))]
    for camera_id in ("demo-cam-1", "demo-cam-2"):
        mine = [status for status in statuses if status.camera_id == camera_id]
        current = [status for status in mine if status.valid_to is None]
        assert len(current) == 1
        assert current[0].valid_from == max(status.valid_from for status in mine)


@pytest.mark.parametrize("text, size", [("2048", 2048), ("64k", 65536), ("64KiB", 65536),
                                        ("1.5MiB", 1572864), ("1G", 1 << 30), (" 3 kb ", 3072)])
def test_sizes_are_read_as_people_write_them(text, size):
    assert parse_size(text) == size


def test_a_size_that_is_not_one_is_a_usage_error(config_file):
    result = CliRunner().invoke(main, ["--config", str(config_file), "demo-data", "--file-size", "big"])
    assert result.exit_code == 2 and "64KiB" in result.output


# The Recorder -------------------------------------------------------------------------------

@pytest.fixture
def recorder(services):
    return Recorder(services.database, services.files)


def test_a_record_needs_its_status_first(recorder, tmp_path):
    owner = factories.status()
    path = tmp_path / "frame.png"
    path.write_bytes(b"pixels")
    record = factories.file_record(owner, b"pixels")
    with pytest.raises(RecordingError, match="record the camera's status before"):
        recorder.record_file(record, path)


def test_bytes_that_do_not_match_the_md5_are_refused(recorder, services, tmp_path):
    owner = factories.status()
    recorder.record_status(owner)
    path = tmp_path / "frame.png"
    path.write_bytes(b"other pixels")
    record = factories.file_record(owner, b"pixels")
    with pytest.raises(RecordingError, match="md5"):
        recorder.record_file(record, path)
    with services.database.read() as session:
        assert session.scalar(select(func.count()).select_from(FileRecordRow)) == 0


def test_a_missing_md5_is_computed(recorder, services, tmp_path):
    owner = factories.status()
    recorder.record_status(owner)
    path = tmp_path / "frame.png"
    path.write_bytes(b"pixels")
    stored = recorder.record_file(factories.file_record(owner, b"pixels", md5=None), path)
    assert stored.md5 == md5_bytes(b"pixels")


def test_an_event_is_recorded_whole_or_not_at_all(recorder, services, tmp_path):
    owner = factories.status()
    recorder.record_status(owner)
    files = [factories.file_record(owner, b"a"), factories.file_record(owner, b"b")]
    event = factories.event(owner, files)
    (tmp_path / "a").write_bytes(b"a")
    with pytest.raises(RecordingError, match="no bytes given"):
        recorder.record_event(event, {files[0].file_id: tmp_path / "a"})
    (tmp_path / "b").write_bytes(b"b")
    recorder.record_event(event, {files[0].file_id: tmp_path / "a", files[1].file_id: tmp_path / "b"})
    with services.database.read() as session:
        assert store.get_event(session, event.event_id) == event
    with pytest.raises(RecordingError, match="already recorded"):
        recorder.record_event(event, {files[0].file_id: tmp_path / "a",
                                      files[1].file_id: tmp_path / "b"})
    with pytest.raises(RecordingError, match="already recorded"):
        recorder.record_status(owner)


def test_a_new_status_ends_the_cameras_current_one(recorder, services):
    morning = factories.status("cam-1", valid_from=1_000_000)
    evening = factories.status("cam-1", valid_from=5_000_000)
    other_camera = factories.status("cam-2", valid_from=2_000_000)
    for status in (morning, other_camera, evening):
        recorder.record_status(status)
    with services.database.read() as session:
        assert store.get_status(session, morning.status_id).valid_to == evening.valid_from
        assert store.get_status(session, evening.status_id).valid_to is None
        assert store.get_status(session, other_camera.status_id).valid_to is None


def test_a_status_recorded_late_leaves_the_current_one_alone(recorder, services):
    current = factories.status("cam-1", valid_from=5_000_000)
    recorder.record_status(current)
    earlier = factories.status("cam-1", valid_from=1_000_000, valid_to=5_000_000)
    recorder.record_status(earlier)
    with services.database.read() as session:
        assert store.get_status(session, current.status_id).valid_to is None
        assert store.get_status(session, earlier.status_id).valid_to == 5_000_000
