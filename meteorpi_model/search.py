"""Searches over events and stand-alone files, as the original read API took them.

``EventSearch`` and ``FileSearch`` share the camera, location, time,
time-of-night and meta criteria; their wire form is a JSON object keyed by the
field names, with absent criteria omitted.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Self

from . import _fields as F
from .errors import ValidationError
from .limits import (
    MAX_SAFE_INTEGER,
    MAX_SEARCH_LIMIT,
    MAX_SEARCH_TERMS,
    MAX_STRING_LENGTH,
    MAX_TIME_MS,
    SECONDS_PER_DAY,
)
from .values import NSString

CONSTRAINT_TYPES = ("string_equals", "number_equals", "less", "greater", "before", "after")
DEFAULT_SEARCH_LIMIT = 100


@dataclass(frozen=True, slots=True)
class MetaConstraint:
    """A condition on the meta entry with the given key.

    ``string_equals`` takes a string; ``number_equals``, ``less`` and
    ``greater`` a finite number; ``before`` and ``after`` a time in ms. On the
    wire ``constraint_type`` is called ``type``, as in a Meta.
    """

    constraint_type: str
    key: NSString
    value: str | int | float

    def __post_init__(self) -> None:
        if not isinstance(self.constraint_type, str) or self.constraint_type not in CONSTRAINT_TYPES:
            raise ValidationError("type", "must be one of " + ", ".join(CONSTRAINT_TYPES))
        F.instance(self.key, "key", NSString)
        if self.constraint_type == "string_equals":
            F.text(self.value, "value", MAX_STRING_LENGTH)
        elif self.constraint_type in ("before", "after"):
            F.integer(self.value, "value", 0, MAX_TIME_MS)
        else:
            F.number(self.value, "value")

    def to_dict(self) -> dict:
        """The wire form ``{"type", "key", "value"}``."""
        return {"type": self.constraint_type, "key": str(self.key), "value": self.value}

    @classmethod
    def from_dict(cls, data: Any, path: str = "") -> Self:
        """Parse and validate the wire form; raises only ValidationError."""
        with F.errors_under(path):
            d = F.mapping(data)
            constraint_type = F.required(d, "type")
            key = NSString.parse(F.required(d, "key"), "key")
            return cls(constraint_type, key, F.required(d, "value"))


# Optional scalar criteria shared by both searches: (name, checker, bounds).
_SHARED_SCALARS = (
    ("lat_min", F.number, (-90, 90)),
    ("lat_max", F.number, (-90, 90)),
    ("long_min", F.number, (-180, 180)),
    ("long_max", F.number, (-180, 180)),
    ("after", F.integer, (0, MAX_TIME_MS)),
    ("before", F.integer, (0, MAX_TIME_MS)),
    ("after_offset", F.number, (0, SECONDS_PER_DAY)),
    ("before_offset", F.number, (0, SECONDS_PER_DAY)),
)
_RANGES = (("lat_min", "lat_max"), ("long_min", "long_max"), ("after", "before"), ("after_offset", "before_offset"))


def check_camera_id(value: Any, path: str = "camera_id") -> str:
    """``value`` if it is a camera id a search may name: the rule every ``camera_ids``
    entry follows, for other places that take a camera id from a client (a URL, the
    change feed's filter). Raises ValidationError."""
    return F.identifier(value, path)


def _validate_shared(search: EventSearch | FileSearch) -> None:
    if search.camera_ids is not None:
        F.array(search.camera_ids, "camera_ids", MAX_SEARCH_TERMS)
        if not search.camera_ids:
            # An empty list would read as "no camera"; callers mean "any camera" far
            # more often, and an export of everything must not hinge on that guess.
            raise ValidationError("camera_ids", "must not be empty (omit it to match every camera)")
        for index, camera_id in enumerate(search.camera_ids):
            check_camera_id(camera_id, f"camera_ids[{index}]")
    for name, check, bounds in _SHARED_SCALARS:
        F.optional(getattr(search, name), name, check, *bounds)
    for low_name, high_name in _RANGES:
        low, high = getattr(search, low_name), getattr(search, high_name)
        if low is not None and high is not None and high < low:
            raise ValidationError(high_name, f"must not be less than {low_name}")
    F.instances(search.meta_constraints, "meta_constraints", MAX_SEARCH_TERMS, MetaConstraint)
    F.integer(search.limit, "limit", 1, MAX_SEARCH_LIMIT)
    F.integer(search.skip, "skip", 0, MAX_SAFE_INTEGER)


def _shared_to_dict(search: EventSearch | FileSearch) -> dict:
    data: dict[str, Any] = {}
    if search.camera_ids is not None:
        data["camera_ids"] = list(search.camera_ids)
    for name, _, _ in _SHARED_SCALARS:
        if getattr(search, name) is not None:
            data[name] = getattr(search, name)
    return data


def _shared_tail_to_dict(search: EventSearch | FileSearch, data: dict) -> dict:
    if search.meta_constraints:
        data["meta_constraints"] = [constraint.to_dict() for constraint in search.meta_constraints]
    data["limit"] = search.limit
    data["skip"] = search.skip
    return data


def _shared_from_dict(d: dict) -> dict[str, Any]:
    kwargs = {name: d.get(name) for name, _, _ in _SHARED_SCALARS}
    kwargs["camera_ids"] = d.get("camera_ids")
    constraints = d.get("meta_constraints")
    kwargs["meta_constraints"] = (
        [] if constraints is None
        else F.parse_items(constraints, "meta_constraints", MAX_SEARCH_TERMS, MetaConstraint.from_dict)
    )
    limit, skip = d.get("limit"), d.get("skip")
    kwargs["limit"] = DEFAULT_SEARCH_LIMIT if limit is None else limit
    kwargs["skip"] = 0 if skip is None else skip
    return kwargs


def _optional_ns(value: Any, path: str) -> NSString | None:
    return None if value is None else NSString.parse(value, path)


@dataclass(slots=True)
class EventSearch:
    """Criteria selecting events; every criterion given must hold.

    Times are ms since the epoch; the offsets are seconds since the previous
    midday (0..86400), so that "2am to 4am on any night" is one range.
    """

    camera_ids: list[str] | None = None
    lat_min: float | None = None
    lat_max: float | None = None
    long_min: float | None = None
    long_max: float | None = None
    after: int | None = None
    before: int | None = None
    after_offset: float | None = None
    before_offset: float | None = None
    event_type: NSString | None = None
    meta_constraints: list[MetaConstraint] = field(default_factory=list)
    limit: int = DEFAULT_SEARCH_LIMIT
    skip: int = 0

    def __post_init__(self) -> None:
        _validate_shared(self)
        F.optional(self.event_type, "event_type", F.instance, NSString)

    def to_dict(self) -> dict:
        """The wire form; criteria that are None (or no meta constraints) are omitted."""
        data = _shared_to_dict(self)
        if self.event_type is not None:
            data["event_type"] = str(self.event_type)
        return _shared_tail_to_dict(self, data)

    @classmethod
    def from_dict(cls, data: Any, path: str = "") -> Self:
        """Parse and validate the wire form; raises only ValidationError, with paths under ``path``."""
        with F.errors_under(path):
            d = F.mapping(data)
            return cls(event_type=_optional_ns(d.get("event_type"), "event_type"), **_shared_from_dict(d))


@dataclass(slots=True)
class FileSearch:
    """Criteria selecting files; every criterion given must hold.

    With ``exclude_events`` only stand-alone files (those not part of an
    event) match. Times and offsets are as in EventSearch.
    """

    camera_ids: list[str] | None = None
    lat_min: float | None = None
    lat_max: float | None = None
    long_min: float | None = None
    long_max: float | None = None
    after: int | None = None
    before: int | None = None
    after_offset: float | None = None
    before_offset: float | None = None
    mime_type: str | None = None
    semantic_type: NSString | None = None
    meta_constraints: list[MetaConstraint] = field(default_factory=list)
    exclude_events: bool = False
    limit: int = DEFAULT_SEARCH_LIMIT
    skip: int = 0

    def __post_init__(self) -> None:
        _validate_shared(self)
        F.optional(self.mime_type, "mime_type", F.mime_type)
        F.optional(self.semantic_type, "semantic_type", F.instance, NSString)
        F.boolean(self.exclude_events, "exclude_events")

    def to_dict(self) -> dict:
        """The wire form; criteria that are None (or no meta constraints) are omitted."""
        data = _shared_to_dict(self)
        if self.mime_type is not None:
            data["mime_type"] = self.mime_type
        if self.semantic_type is not None:
            data["semantic_type"] = str(self.semantic_type)
        data["exclude_events"] = self.exclude_events
        return _shared_tail_to_dict(self, data)

    @classmethod
    def from_dict(cls, data: Any, path: str = "") -> Self:
        """Parse and validate the wire form; raises only ValidationError, with paths under ``path``."""
        with F.errors_under(path):
            d = F.mapping(data)
            exclude_events = d.get("exclude_events")
            return cls(
                mime_type=d.get("mime_type"),
                semantic_type=_optional_ns(d.get("semantic_type"), "semantic_type"),
                exclude_events=False if exclude_events is None else exclude_events,
                **_shared_from_dict(d),
            )
