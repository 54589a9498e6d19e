"""Synthetic camera data for demos, tests and benchmarks, recorded as a camera records it.

For each camera and night: a camera status valid from midday (UTC) to the next midday,
with small changes night to night (and, every third night, the camera re-aimed at
midnight, so a night has two statuses); events between 20:00 and 04:00, each with
several images and meta of every type (string, number, date); and stand-alone files
(a time-lapse frame) spread over the night. Everything goes through
:class:`~meteorpi_server.recording.Recorder`, so the records and the bytes are exactly
what a camera node would hold. Run again over the same nights, it records new statuses,
and the Recorder ends each camera's current one where its successor begins, so a camera
still has one current status.
"""
from __future__ import annotations

import datetime
import random
import re
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from meteorpi_model import (CameraStatus, Event, FileRecord, Location, Meta, NSString,
                            Orientation, Point)

from .recording import Recorder

HOUR_MS = 3_600_000
DAY_MS = 24 * HOUR_MS
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
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

    def _image(self, scratch: Path, file_id: uuid.UUID) -> Path:
        size = self.plan.file_size
        data = (PNG_SIGNATURE + self.rng.randbytes(max(0, size - len(PNG_SIGNATURE))))[:size]
        path = scratch / file_id.hex
        path.write_bytes(data)
        self.result.bytes += size
        return path

    def _file(self, status: CameraStatus, time_ms: int, semantic: str, name: str,
              meta: list[Meta]) -> FileRecord:
        return FileRecord(
            file_id=_uuid(self.rng), camera_id=status.camera_id, mime_type="image/png",
            semantic_type=NSString.parse(semantic), file_time=time_ms,
            file_size=self.plan.file_size, status_id=status.status_id, file_name=name, meta=meta)

    def _event(self, camera: _Camera, status: CameraStatus, time_ms: int, scratch: Path) -> None:
        duration = round(self.rng.uniform(0.2, 3.0), 3)
        brightness = round(self.rng.uniform(0.5, 250.0), 2)
        kinds = ["meteorpi:triggers/event/maxBrightness", "meteorpi:triggers/event/time-average",
                 "meteorpi:triggers/event/previous-frame", "meteorpi:triggers/event/thumbnail"]
        files = [self._file(status, time_ms + index, kinds[index % len(kinds)],
                            f"event_{index}.png",
                            [Meta.number("meteorpi:gain", self.rng.choice([1, 2, 4])),
                             Meta.string("meteorpi:processing", "lens-corrected"),
                             Meta.date("meteorpi:exposure_start", time_ms + index)])
                 for index in range(self.plan.files_per_event)]
        event = Event(
            event_id=_uuid(self.rng), camera_id=camera.camera_id, event_time=time_ms,
            event_type=NSString.parse("meteorpi:meteor"), status_id=status.status_id, files=files,
            meta=[Meta.number("meteorpi:duration", duration),
                  Meta.number("meteorpi:peak_brightness", brightness),
                  Meta.number("meteorpi:frames", int(duration * 25)),
                  Meta.date("meteorpi:peak_time", time_ms + int(duration * 500)),
                  Meta.string("meteorpi:classification",
                              self.rng.choice(["sporadic", "Perseid", "Geminid", "plane", "bird"]))])
        paths = {record.file_id: self._image(scratch, record.file_id) for record in files}
        self.recorder.record_event(event, paths)
        for path in paths.values():
            path.unlink()
        self.result.events += 1
        self.result.event_files += len(files)

    def _standalone(self, camera: _Camera, status: CameraStatus, time_ms: int, scratch: Path) -> None:
        record = self._file(status, time_ms, "meteorpi:timelapse/frame/lens-corrected",
                            "timelapse.png",
                            [Meta.number("meteorpi:sky_clarity", round(self.rng.uniform(0, 100), 1)),
                             Meta.string("meteorpi:weather", self.rng.choice(["clear", "cloudy", "haze"])),
                             Meta.date("meteorpi:exposure_start", time_ms)])
        path = self._image(scratch, record.file_id)
        self.recorder.record_file(record, path)
        path.unlink()
        self.result.standalone_files += 1


def generate(recorder: Recorder, plan: DemoPlan, rng: random.Random | None = None,
             on_progress: Callable[[DemoResult], None] | None = None) -> DemoResult:
    """Record ``plan``'s data; returns what was made."""
    return DemoData(recorder, plan, rng, on_progress).generate()
