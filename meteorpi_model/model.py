"""The entities camera nodes exchange: camera statuses, files and events.

Each entity converts to and from the legacy JSON wire format of docs/protocol.rst
with ``to_dict()`` and ``from_dict()``. Constructors validate their arguments
too, so an entity that exists is always one the wire format can carry.
Constructors are strict about types (ids are ``uuid.UUID``, types and keys are
``NSString``); ``from_dict`` does the parsing.

On input, ``files``, ``meta`` and ``regions`` are required like the other
fields: a sender that leaves out an event's files is broken, and accepting the
event as file-less would answer "complete" and lose the files for good.
"""

from __future__ import annotations

import enum
import uuid
from dataclasses import dataclass, field
from typing import Any, ClassVar, Self

from . import _fields as F
from .errors import ValidationError
from .limits import (
    MAX_FILE_SIZE,
    MAX_FILES_PER_EVENT,
    MAX_ID_STRING_LENGTH,
    MAX_META_ENTRIES,
    MAX_POINTS_PER_REGION,
    MAX_REGIONS,
    MAX_SOFTWARE_VERSION,
    MAX_STRING_LENGTH,
    MAX_TIME_MS,
)
from .values import (
    DEFAULT_NAMESPACE,
    META_TYPES,
    Location,
    Meta,
    NSString,
    Orientation,
    Point,
    format_id,
    parse_id,
    parse_md5,
)

__all__ = [
    "DEFAULT_NAMESPACE",
    "META_TYPES",
    "ROLES",
    "CameraStatus",
    "Event",
    "FileRecord",
    "Location",
    "Meta",
    "NSString",
    "Orientation",
    "Point",
    "Role",
    "files_of",
    "format_id",
    "parse_id",
    "parse_md5",
]

ROLES = ("user", "camera_admin", "import")


class Role(str, enum.Enum):
    """A permission a user may hold; the value is the role's name on the wire and in storage."""

    USER = "user"
    CAMERA_ADMIN = "camera_admin"
    IMPORT = "import"

    def __str__(self) -> str:
        return self.value


def _time(value: Any, path: str) -> int:
    return F.integer(value, path, 0, MAX_TIME_MS)


def _camera_id(value: Any, path: str) -> str:
    return F.identifier(value, path)


def _file_name(value: Any, path: str) -> str:
    # Clients may use the suggested name as a path component when saving a
    # download, so it must name a single file and nothing else.
    F.identifier(value, path)
    if "/" in value or "\\" in value or value in (".", ".."):
        raise ValidationError(path, "must be a plain file name: no '/' or '\\', not '.' or '..'")
    return value


def _meta_list(value: Any) -> list[Meta]:
    return F.parse_items(value, "meta", MAX_META_ENTRIES, Meta.from_dict)


@dataclass(slots=True)
class CameraStatus:
    """What a camera was and how it was set up over ``[valid_from, valid_to)``.

    ``valid_to`` is None while the status is still current. Events and files
    name the status that was current when they were made.
    """

    ENTITY_TYPE: ClassVar[str] = "status"

    camera_id: str
    status_id: uuid.UUID
    valid_from: int
    software_version: int
    location: Location
    orientation: Orientation
    valid_to: int | None = None
    lens: str | None = None
    sensor: str | None = None
    inst_url: str | None = None
    inst_name: str | None = None
    regions: list[list[Point]] = field(default_factory=list)

    def __post_init__(self) -> None:
        _camera_id(self.camera_id, "camera_id")
        F.instance(self.status_id, "status_id", uuid.UUID)
        _time(self.valid_from, "valid_from")
        F.integer(self.software_version, "software_version", 0, MAX_SOFTWARE_VERSION)
        F.instance(self.location, "location", Location)
        F.instance(self.orientation, "orientation", Orientation)
        if self.valid_to is not None:
            _time(self.valid_to, "valid_to")
            if self.valid_to < self.valid_from:
                raise ValidationError("valid_to", "must not be earlier than valid_from")
        F.optional(self.lens, "lens", F.text, MAX_STRING_LENGTH)
        F.optional(self.sensor, "sensor", F.text, MAX_STRING_LENGTH)
        F.optional(self.inst_url, "inst_url", F.text, MAX_STRING_LENGTH)
        F.optional(self.inst_name, "inst_name", F.text, MAX_ID_STRING_LENGTH)
        for index, region in enumerate(F.array(self.regions, "regions", MAX_REGIONS)):
            F.instances(region, f"regions[{index}]", MAX_POINTS_PER_REGION, Point)

    @property
    def id(self) -> uuid.UUID:
        """The status id."""
        return self.status_id

    def to_dict(self) -> dict:
        """The docs/protocol.rst wire form; absent optional fields are omitted."""
        data: dict[str, Any] = {"camera_id": self.camera_id, "status_id": format_id(self.status_id)}
        for name in ("lens", "sensor", "inst_url", "inst_name"):
            if getattr(self, name) is not None:
                data[name] = getattr(self, name)
        data["valid_from"] = self.valid_from
        if self.valid_to is not None:
            data["valid_to"] = self.valid_to
        data["software_version"] = self.software_version
        data["location"] = self.location.to_dict()
        data["orientation"] = self.orientation.to_dict()
        data["regions"] = [[point.to_dict() for point in region] for region in self.regions]
        return data

    @classmethod
    def from_dict(cls, data: Any, path: str = "") -> Self:
        """Parse and validate the wire form; raises only ValidationError, with paths under ``path``."""
        with F.errors_under(path):
            d = F.mapping(data)
            regions = F.parse_items(F.required(d, "regions"), "regions", MAX_REGIONS, _parse_region)
            return cls(
                camera_id=F.required(d, "camera_id"),
                status_id=parse_id(F.required(d, "status_id"), "status_id"),
                valid_from=F.required(d, "valid_from"),
                software_version=F.required(d, "software_version"),
                location=Location.from_dict(F.required(d, "location"), "location"),
                orientation=Orientation.from_dict(F.required(d, "orientation"), "orientation"),
                valid_to=d.get("valid_to"),
                lens=d.get("lens"),
                sensor=d.get("sensor"),
                inst_url=d.get("inst_url"),
                inst_name=d.get("inst_name"),
                regions=regions,
            )


def _parse_region(value: Any, path: str) -> list[Point]:
    return F.parse_items(value, path, MAX_POINTS_PER_REGION, Point.from_dict)


@dataclass(slots=True)
class FileRecord:
    """A file made by a camera, described by its metadata; the bytes travel separately.

    ``file_size`` 0 means the bytes are not yet available. ``md5`` is the
    lowercase hex MD5 of the bytes (given in any case, it is stored lowercased).
    """

    ENTITY_TYPE: ClassVar[str] = "file"

    file_id: uuid.UUID
    camera_id: str
    mime_type: str
    semantic_type: NSString
    file_time: int
    file_size: int
    status_id: uuid.UUID
    md5: str | None = None
    file_name: str | None = None
    meta: list[Meta] = field(default_factory=list)

    def __post_init__(self) -> None:
        F.instance(self.file_id, "file_id", uuid.UUID)
        _camera_id(self.camera_id, "camera_id")
        F.mime_type(self.mime_type, "mime_type")
        F.instance(self.semantic_type, "semantic_type", NSString)
        _time(self.file_time, "file_time")
        F.integer(self.file_size, "file_size", 0, MAX_FILE_SIZE)
        F.instance(self.status_id, "status_id", uuid.UUID)
        if self.md5 is not None:
            self.md5 = parse_md5(self.md5, "md5")
        F.optional(self.file_name, "file_name", _file_name)
        F.instances(self.meta, "meta", MAX_META_ENTRIES, Meta)

    @property
    def id(self) -> uuid.UUID:
        """The file id."""
        return self.file_id

    def to_dict(self) -> dict:
        """The docs/protocol.rst wire form; absent optional fields are omitted."""
        data: dict[str, Any] = {
            "file_id": format_id(self.file_id),
            "camera_id": self.camera_id,
            "mime_type": self.mime_type,
        }
        if self.file_name is not None:
            data["file_name"] = self.file_name
        data["semantic_type"] = str(self.semantic_type)
        data["file_time"] = self.file_time
        data["file_size"] = self.file_size
        data["status_id"] = format_id(self.status_id)
        if self.md5 is not None:
            data["md5"] = self.md5
        data["meta"] = [meta.to_dict() for meta in self.meta]
        return data

    @classmethod
    def from_dict(cls, data: Any, path: str = "") -> Self:
        """Parse and validate the wire form; raises only ValidationError, with paths under ``path``."""
        with F.errors_under(path):
            d = F.mapping(data)
            md5 = d.get("md5")
            return cls(
                file_id=parse_id(F.required(d, "file_id"), "file_id"),
                camera_id=F.required(d, "camera_id"),
                mime_type=F.required(d, "mime_type"),
                semantic_type=NSString.parse(F.required(d, "semantic_type"), "semantic_type"),
                file_time=F.required(d, "file_time"),
                file_size=F.required(d, "file_size"),
                status_id=parse_id(F.required(d, "status_id"), "status_id"),
                md5=None if md5 is None else parse_md5(md5, "md5"),
                file_name=d.get("file_name"),
                meta=_meta_list(F.required(d, "meta")),
            )


@dataclass(slots=True)
class Event:
    """Something a camera saw (a meteor, say), with the files it made about it.

    The order of ``files`` and of ``meta`` is significant and kept; no two
    files of one event share a file id.
    """

    ENTITY_TYPE: ClassVar[str] = "event"

    event_id: uuid.UUID
    camera_id: str
    event_time: int
    event_type: NSString
    status_id: uuid.UUID
    files: list[FileRecord] = field(default_factory=list)
    meta: list[Meta] = field(default_factory=list)

    def __post_init__(self) -> None:
        F.instance(self.event_id, "event_id", uuid.UUID)
        _camera_id(self.camera_id, "camera_id")
        _time(self.event_time, "event_time")
        F.instance(self.event_type, "event_type", NSString)
        F.instance(self.status_id, "status_id", uuid.UUID)
        F.instances(self.files, "files", MAX_FILES_PER_EVENT, FileRecord)
        F.instances(self.meta, "meta", MAX_META_ENTRIES, Meta)
        first_index: dict[uuid.UUID, int] = {}
        for index, file_record in enumerate(self.files):
            earlier = first_index.setdefault(file_record.file_id, index)
            if earlier != index:
                raise ValidationError(f"files[{index}].file_id", f"duplicates files[{earlier}].file_id")

    @property
    def id(self) -> uuid.UUID:
        """The event id."""
        return self.event_id

    def to_dict(self) -> dict:
        """The docs/protocol.rst wire form, files included."""
        return {
            "event_id": format_id(self.event_id),
            "camera_id": self.camera_id,
            "event_time": self.event_time,
            "event_type": str(self.event_type),
            "status_id": format_id(self.status_id),
            "files": [file_record.to_dict() for file_record in self.files],
            "meta": [meta.to_dict() for meta in self.meta],
        }

    @classmethod
    def from_dict(cls, data: Any, path: str = "") -> Self:
        """Parse and validate the wire form; raises only ValidationError, with paths under ``path``."""
        with F.errors_under(path):
            d = F.mapping(data)
            files = F.parse_items(F.required(d, "files"), "files", MAX_FILES_PER_EVENT, FileRecord.from_dict)
            return cls(
                event_id=parse_id(F.required(d, "event_id"), "event_id"),
                camera_id=F.required(d, "camera_id"),
                event_time=F.required(d, "event_time"),
                event_type=NSString.parse(F.required(d, "event_type"), "event_type"),
                status_id=parse_id(F.required(d, "status_id"), "status_id"),
                files=files,
                meta=_meta_list(F.required(d, "meta")),
            )


def files_of(entity: Event | FileRecord | CameraStatus) -> list[FileRecord]:
    """The file records an entity carries: an event's files, a stand-alone file itself,
    none for a camera status."""
    if isinstance(entity, Event):
        return list(entity.files)
    return [entity] if isinstance(entity, FileRecord) else []
