"""Realistic records for tests: statuses, events with files and meta, and their bytes."""
from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from pathlib import Path

from meteorpi_model import (CameraStatus, Event, FileRecord, Location, Meta, NSString,
                            Orientation, Point, md5_bytes)

NIGHT = 1_700_000_000_000  # a fixed night, so records are reproducible


def status(camera_id: str = "cam-1", valid_from: int = NIGHT, **changes) -> CameraStatus:
    values = dict(
        camera_id=camera_id, status_id=uuid.uuid4(), valid_from=valid_from, software_version=2,
        location=Location(lat=52.2, long=0.12, gps=True, error=1.5),
        orientation=Orientation(alt=45.0, az=180.0, error=0.5, rot=0.0, width=60.0),
        lens="Fujinon 1.4", sensor="Watec 902H", inst_name="Cambridge school",
        inst_url="https://example.org/", regions=[[Point(0, 0), Point(720, 0), Point(720, 576)]])
    values.update(changes)
    return CameraStatus(**values)


def file_bytes(size: int = 2048, seed: int = 0) -> bytes:
    pattern = bytes((seed + index) % 251 for index in range(251))
    return (pattern * (size // 251 + 1))[:size]


def file_record(owner: CameraStatus, data: bytes, time_ms: int = NIGHT + 1000,
                **changes) -> FileRecord:
    values = dict(
        file_id=uuid.uuid4(), camera_id=owner.camera_id, mime_type="image/png",
        semantic_type=NSString("image", "meteorpi"), file_time=time_ms, file_size=len(data),
        status_id=owner.status_id, md5=md5_bytes(data), file_name="frame.png",
        meta=[Meta.number("meteorpi:brightness", 12.5), Meta.string("meteorpi:note", "bright")])
    values.update(changes)
    return FileRecord(**values)


def event(owner: CameraStatus, files: list[FileRecord], time_ms: int = NIGHT + 1000,
          **changes) -> Event:
    values = dict(
        event_id=uuid.uuid4(), camera_id=owner.camera_id, event_time=time_ms,
        event_type=NSString("meteor", "meteorpi"), status_id=owner.status_id, files=files,
        meta=[Meta.number("meteorpi:duration", 1.25), Meta.date("meteorpi:peak", time_ms + 300),
              Meta.string("meteorpi:class", "sporadic")])
    values.update(changes)
    return Event(**values)


@dataclass
class DataSet:
    """What a camera node holds: statuses, events, stand-alone files, and file bytes on
    disk under ``root``. Usable as the exporter's EntitySource.
    """

    root: Path
    statuses: dict[uuid.UUID, CameraStatus] = field(default_factory=dict)
    events: list[Event] = field(default_factory=list)
    files: list[FileRecord] = field(default_factory=list)
    contents: dict[uuid.UUID, bytes] = field(default_factory=dict)

    def _keep(self, record: FileRecord, data: bytes) -> None:
        self.contents[record.file_id] = data
        self.root.mkdir(parents=True, exist_ok=True)
        (self.root / record.file_id.hex).write_bytes(data)

    def status(self, status_id: uuid.UUID) -> CameraStatus | None:
        return self.statuses.get(status_id)

    def open_file(self, record: FileRecord):
        path = self.root / record.file_id.hex
        return open(path, "rb") if path.exists() else None

    def add_event(self, owner: CameraStatus, file_count: int, size: int = 2048,
                  time_ms: int = NIGHT + 1000) -> Event:
        self.statuses[owner.status_id] = owner
        records = []
        for index in range(file_count):
            data = file_bytes(size, seed=len(self.contents))
            record = file_record(owner, data, time_ms + index)
            self._keep(record, data)
            records.append(record)
        new = event(owner, records, time_ms)
        self.events.append(new)
        return new

    def add_file(self, owner: CameraStatus, size: int = 2048, time_ms: int = NIGHT + 5000) -> FileRecord:
        self.statuses[owner.status_id] = owner
        data = file_bytes(size, seed=len(self.contents))
        record = file_record(owner, data, time_ms, semantic_type=NSString("timelapse", "meteorpi"))
        self._keep(record, data)
        self.files.append(record)
        return record
