"""Synthetic camera data for demos, tests and benchmarks, recorded as a camera records it.

For each camera and night: a camera status valid from midday (UTC) to the next midday,
with small changes night to night (and, every third night, the camera re-aimed at
midnight, so a night has two statuses); events between 20:00 and 04:00, each with
several images and meta of every type (string, number, date); and stand-alone files
(a time-lapse frame) spread over the night. Images are real PNGs (a night sky of noise
and stars) of the requested size, so they open in any viewer. Everything goes through
:class:`~meteorpi_server.node.recording.Recorder`, so the records and the bytes are exactly
what a camera node would hold. Run again over the same nights, it records new statuses,
and the Recorder ends each camera's current one where its successor begins, so a camera
still has one current status.
"""
from __future__ import annotations

import datetime
import math
import random
import re
import struct
import tempfile
import time
import uuid
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from meteorpi_model import (
    CameraStatus,
    Event,
    FileRecord,
    Location,
    Meta,
    NSString,
    Orientation,
    Point,
)

from .recording import Recorder

HOUR_MS = 3_600_000
DAY_MS = 24 * HOUR_MS
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# Ancillary, private, safe-to-copy: viewers skip it. It pads an image to the size asked for.
PADDING_CHUNK = b"deMo"
_CHUNK_OVERHEAD = 12  # length, type and CRC
_MAX_PADDING_CHUNK = 1 << 30  # well under PNG's 2**31 - 1 limit on one chunk
_MAX_IMAGE = (720, 576)  # the camera's frame size
_SIZE = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([kmg]?)(i?b?)\s*", re.IGNORECASE)
_UNITS = {"": 1, "k": 1024, "m": 1024 ** 2, "g": 1024 ** 3}
SITES = [("Cambridge school", 52.2, 0.12), ("Kielder observatory", 55.23, -2.59),
         ("Armagh planetarium", 54.35, -6.65), ("Hampshire college", 51.06, -1.31),
         ("Norfolk sixth form", 52.63, 1.30)]


def parse_size(text: str) -> int:
    """Bytes in ``"2048"``, ``"64k"``, ``"64KiB"``, ``"1.5M"`` or ``"1G"`` (powers of 1024)."""
    match = _SIZE.fullmatch(str(text))
    if not match:
        raise ValueError(f"{text!r} is not a size; write it like 2048, 64KiB or 1.5MiB")
    number, unit, _ = match.groups()
    return int(float(number) * _UNITS[unit.lower()])


@dataclass(frozen=True)
class DemoPlan:
    """How much to make: ``standalone_files`` and ``events_per_night`` are per camera and night."""

    cameras: int = 2
    nights: int = 1
    events_per_night: int = 10
    files_per_event: int = 2
    standalone_files: int = 2
    file_size: int = 64 * 1024
    first_night: datetime.date | None = None  # default: the last ``nights`` nights

    def __post_init__(self) -> None:
        for name in ("cameras", "nights"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1")
        for name in ("events_per_night", "files_per_event", "standalone_files", "file_size"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must not be negative")


@dataclass
class DemoResult:
    statuses: int = 0
    events: int = 0
    event_files: int = 0
    standalone_files: int = 0
    bytes: int = 0
    seconds: float = 0.0


class _Camera:
    """One camera's set-up, drifting a little from night to night."""

    def __init__(self, index: int, rng: random.Random):
        self.camera_id = f"demo-cam-{index + 1}"
        self.rng = rng
        site, lat, long = SITES[index % len(SITES)]
        self.site = site if index < len(SITES) else f"{site} {index // len(SITES) + 1}"
        self.lat, self.long = lat + rng.uniform(-0.05, 0.05), long + rng.uniform(-0.05, 0.05)
        self.altitude, self.azimuth = rng.uniform(30, 70), rng.uniform(0, 360)
        self.software_version = 2

    def status(self, valid_from: int, valid_to: int | None) -> CameraStatus:
        return CameraStatus(
            camera_id=self.camera_id, status_id=_uuid(self.rng), valid_from=valid_from,
            valid_to=valid_to, software_version=self.software_version,
            location=Location(lat=round(self.lat, 5), long=round(self.long, 5), gps=True,
                              error=round(self.rng.uniform(1, 8), 2)),
            orientation=Orientation(alt=round(self.altitude, 3), az=round(self.azimuth, 3),
                                    error=round(self.rng.uniform(0.1, 1.0), 3),
                                    rot=round(self.rng.uniform(-2, 2), 3), width=60.0),
            lens="Fujinon YV2.8x2.8SA-2", sensor="Watec 902H2 Ultimate", inst_name=self.site,
            inst_url="https://meteorpi.example.org/",
            regions=[[Point(0, 0), Point(720, 0), Point(720, 576), Point(0, 576)],
                     [Point(300, 400), Point(420, 400), Point(360, 520)]])

    def drift(self) -> None:
        self.altitude += self.rng.uniform(-0.2, 0.2)
        self.azimuth = (self.azimuth + self.rng.uniform(-0.3, 0.3)) % 360

    def re_aim(self) -> None:
        self.altitude = self.rng.uniform(30, 70)
        self.azimuth = self.rng.uniform(0, 360)
        self.software_version += 1


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


_NOISE_TABLES: dict[int, bytes] = {}


def _noise_table(level: int) -> bytes:
    """Maps random bytes to ``level`` plus a little noise (0 to 15)."""
    table = _NOISE_TABLES.get(level)
    if table is None:
        table = _NOISE_TABLES[level] = bytes(min(255, level + (value & 15)) for value in range(256))
    return table


def _sky_png(rng: random.Random, width: int, height: int) -> bytes:
    """A grey night sky, brighter towards the horizon, with stars and a meteor's streak:
    a complete PNG file."""
    pixels = bytearray()
    for row in range(height):
        pixels += b"\0"  # filter type: none
        pixels += rng.randbytes(width).translate(_noise_table(8 + 48 * row // max(1, height - 1)))
    stride = width + 1
    for _ in range(max(1, width * height // 1500)):
        pixels[rng.randrange(height) * stride + 1 + rng.randrange(width)] = rng.randrange(140, 256)
    x, y = rng.uniform(0, width - 1), rng.uniform(0, height - 1)
    angle, length = rng.uniform(0, 2 * math.pi), rng.uniform(0.1, 0.4) * width
    for step in range(int(length)):
        px, py = int(x + step * math.cos(angle)), int(y + step * math.sin(angle))
        if 0 <= px < width and 0 <= py < height:
            pixels[py * stride + 1 + px] = 255 - int(80 * step / max(1, length))
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8-bit greyscale
    # Noise has no repeats to find: Huffman coding alone packs it as well, and faster.
    deflate = zlib.compressobj(1, zlib.DEFLATED, 15, 8, zlib.Z_HUFFMAN_ONLY)
    data = deflate.compress(pixels) + deflate.flush()
    return PNG_SIGNATURE + _chunk(b"IHDR", header) + _chunk(b"IDAT", data)


class PngMaker:
    """Writes PNG images of a given size: as large an image as fits, then a padding chunk
    that makes up the rest exactly (images smaller than the smallest PNG are bigger)."""

    def __init__(self, rng: random.Random):
        self.rng = rng
        self._scale: dict[int, float] = {}  # per size: pixels per byte that fitted last time

    def write(self, path: Path, size: int) -> int:
        """Write an image of ``size`` bytes to ``path`` and return its size: exactly
        ``size`` from 79 bytes on; below that, the smallest PNG (67 bytes)."""
        end = _chunk(b"IEND", b"")
        budget = size - len(end) - _CHUNK_OVERHEAD
        image = self._image(budget)
        padding = size - len(image) - len(end)
        with open(path, "wb") as out:
            out.write(image)
            written = len(image)
            while padding >= _CHUNK_OVERHEAD:
                length = min(padding - _CHUNK_OVERHEAD, _MAX_PADDING_CHUNK)
                if 0 < padding - length - _CHUNK_OVERHEAD < _CHUNK_OVERHEAD:
                    length -= _CHUNK_OVERHEAD  # leave room for one more whole chunk
                written += self._write_padding(out, length)
                padding -= length + _CHUNK_OVERHEAD
            out.write(end)
        return written + len(end)

    def _image(self, budget: int) -> bytes:
        # Noise compresses to a little more than half a byte a pixel; shrink until it fits.
        pixels_per_byte = self._scale.get(budget, 1.6)
        while True:
            pixels = max(1.0, budget * pixels_per_byte)
            width = max(1, min(_MAX_IMAGE[0], int(math.sqrt(pixels * 5 / 4))))
            height = max(1, min(_MAX_IMAGE[1], int(pixels / width)))
            image = _sky_png(self.rng, width, height)
            if len(image) <= budget or width * height == 1:
                self._scale[budget] = pixels_per_byte
                return image
            pixels_per_byte *= 0.9 * budget / len(image)

    def _write_padding(self, out, length: int) -> int:
        out.write(struct.pack(">I", length) + PADDING_CHUNK)
        crc = zlib.crc32(PADDING_CHUNK)
        left = length
        while left:
            piece = self.rng.randbytes(min(left, 1 << 20))
            crc = zlib.crc32(piece, crc)
            out.write(piece)
            left -= len(piece)
        out.write(struct.pack(">I", crc))
        return length + _CHUNK_OVERHEAD


def _uuid(rng: random.Random) -> uuid.UUID:
    return uuid.UUID(int=rng.getrandbits(128), version=4)


class DemoData:
    """Writes a :class:`DemoPlan`'s records through a :class:`Recorder`."""

    def __init__(self, recorder: Recorder, plan: DemoPlan, rng: random.Random | None = None,
                 on_progress: Callable[[DemoResult], None] | None = None):
        self.recorder = recorder
        self.plan = plan
        self.rng = rng or random.Random()
        self.on_progress = on_progress
        self.result = DemoResult()
        self.images = PngMaker(self.rng)

    def generate(self) -> DemoResult:
        started = time.monotonic()
        first = self.plan.first_night or (datetime.datetime.now(datetime.UTC).date()
                                          - datetime.timedelta(days=self.plan.nights))
        midday = int(datetime.datetime.combine(first, datetime.time(12), datetime.UTC)
                     .timestamp() * 1000)
        cameras = [_Camera(index, self.rng) for index in range(self.plan.cameras)]
        with tempfile.TemporaryDirectory(prefix="meteorpi-demo-") as scratch:
            for night in range(self.plan.nights):
                night_start = midday + night * DAY_MS
                last_night = night == self.plan.nights - 1
                for camera in cameras:
                    self._night(camera, night, night_start, last_night, Path(scratch))
                    if self.on_progress:
                        self.on_progress(self.result)
        self.result.seconds = time.monotonic() - started
        return self.result

    def _night(self, camera: _Camera, night: int, start: int, last_night: bool,
               scratch: Path) -> None:
        end = None if last_night else start + DAY_MS
        camera.drift()
        if night % 3 == 2:
            # Re-aimed at midnight: the evening and the morning have different statuses.
            midnight = start + 12 * HOUR_MS
            statuses = [(camera.status(start, midnight), start, midnight)]
            camera.re_aim()
            statuses.append((camera.status(midnight, end), midnight, start + DAY_MS))
        else:
            statuses = [(camera.status(start, end), start, start + DAY_MS)]
        for status, _, _ in statuses:
            self.recorder.record_status(status)
            self.result.statuses += 1

        def status_at(time_ms: int) -> CameraStatus:
            return next(status for status, begin, finish in statuses if begin <= time_ms < finish)

        dusk, dawn = start + 8 * HOUR_MS, start + 16 * HOUR_MS  # 20:00 to 04:00 UTC
        for time_ms in sorted(self.rng.randrange(dusk, dawn) for _ in range(self.plan.events_per_night)):
            self._event(camera, status_at(time_ms), time_ms, scratch)
        for index in range(self.plan.standalone_files):
            time_ms = dusk + (index + 1) * (dawn - dusk) // (self.plan.standalone_files + 1)
            self._standalone(camera, status_at(time_ms), time_ms, scratch)

    def _image(self, scratch: Path, file_id: uuid.UUID) -> tuple[Path, int]:
        path = scratch / file_id.hex
        size = self.images.write(path, self.plan.file_size)
        self.result.bytes += size
        return path, size

    def _file(self, status: CameraStatus, time_ms: int, semantic: str, name: str,
              meta: list[Meta], scratch: Path) -> tuple[FileRecord, Path]:
        file_id = _uuid(self.rng)
        path, size = self._image(scratch, file_id)
        record = FileRecord(
            file_id=file_id, camera_id=status.camera_id, mime_type="image/png",
            semantic_type=NSString.parse(semantic), file_time=time_ms,
            file_size=size, status_id=status.status_id, file_name=name, meta=meta)
        return record, path

    def _event(self, camera: _Camera, status: CameraStatus, time_ms: int, scratch: Path) -> None:
        duration = round(self.rng.uniform(0.2, 3.0), 3)
        brightness = round(self.rng.uniform(0.5, 250.0), 2)
        kinds = ["meteorpi:triggers/event/maxBrightness", "meteorpi:triggers/event/time-average",
                 "meteorpi:triggers/event/previous-frame", "meteorpi:triggers/event/thumbnail"]
        made = [self._file(status, time_ms + index, kinds[index % len(kinds)],
                           f"event_{index}.png",
                           [Meta.number("meteorpi:gain", self.rng.choice([1, 2, 4])),
                            Meta.string("meteorpi:processing", "lens-corrected"),
                            Meta.date("meteorpi:exposure_start", time_ms + index)], scratch)
                for index in range(self.plan.files_per_event)]
        files = [record for record, _ in made]
        paths = {record.file_id: path for record, path in made}
        event = Event(
            event_id=_uuid(self.rng), camera_id=camera.camera_id, event_time=time_ms,
            event_type=NSString.parse("meteorpi:meteor"), status_id=status.status_id, files=files,
            meta=[Meta.number("meteorpi:duration", duration),
                  Meta.number("meteorpi:peak_brightness", brightness),
                  Meta.number("meteorpi:frames", int(duration * 25)),
                  Meta.date("meteorpi:peak_time", time_ms + int(duration * 500)),
                  Meta.string("meteorpi:classification",
                              self.rng.choice(["sporadic", "Perseid", "Geminid", "plane", "bird"]))])
        self.recorder.record_event(event, paths)
        for path in paths.values():
            path.unlink()
        self.result.events += 1
        self.result.event_files += len(files)

    def _standalone(self, camera: _Camera, status: CameraStatus, time_ms: int, scratch: Path) -> None:
        record, path = self._file(
            status, time_ms, "meteorpi:timelapse/frame/lens-corrected", "timelapse.png",
            [Meta.number("meteorpi:sky_clarity", round(self.rng.uniform(0, 100), 1)),
             Meta.string("meteorpi:weather", self.rng.choice(["clear", "cloudy", "haze"])),
             Meta.date("meteorpi:exposure_start", time_ms)], scratch)
        self.recorder.record_file(record, path)
        path.unlink()
        self.result.standalone_files += 1


def generate(recorder: Recorder, plan: DemoPlan, rng: random.Random | None = None,
             on_progress: Callable[[DemoResult], None] | None = None) -> DemoResult:
    """Record ``plan``'s data; returns what was made."""
    return DemoData(recorder, plan, rng, on_progress).generate()
