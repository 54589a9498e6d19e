"""Value types the entities are built from: ids, md5 sums, namespaced strings, meta, geometry.

``meteorpi_model.model`` re-exports everything here; import from there.
"""

from __future__ import annotations

import functools

import re
import uuid
from dataclasses import dataclass
from typing import Any, ClassVar, Self

from . import _fields as F
from .errors import ValidationError
from .limits import MAX_ID_STRING_LENGTH, MAX_STRING_LENGTH, MAX_TIME_MS

DEFAULT_NAMESPACE = "meteorpi"
META_TYPES = ("string", "number", "date")

_HEX32 = re.compile(r"[0-9a-fA-F]{32}")
_DASHED_UUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")


def parse_id(value: Any, path: str = "") -> uuid.UUID:
    """Parse an event, file or status id: 32 hex digits, or the dashed 36-character form.

    Either case is accepted. Anything else, including a non-string or a
    ``uuid.UUID`` instance, raises ValidationError at ``path``.
    """
    # uuid.UUID() alone would also take braces, "urn:uuid:" and stray dashes.
    if not isinstance(value, str) or not (_HEX32.fullmatch(value) or _DASHED_UUID.fullmatch(value)):
        raise ValidationError(path, "must be an id of 32 hex digits")
    return uuid.UUID(value)


def format_id(value: uuid.UUID) -> str:
    """The wire form of an id: 32 lowercase hex digits, no dashes."""
    return value.hex


def parse_md5(value: Any, path: str = "") -> str:
    """Parse an MD5 digest given as 32 hex digits in either case; returns it lowercased."""
    if not isinstance(value, str) or not _HEX32.fullmatch(value):
        raise ValidationError(path, "must be an MD5 digest of 32 hex digits")
    return value.lower()


@dataclass(frozen=True, slots=True)
class NSString:
    """A namespaced string such as an event type, a semantic type or a meta key.

    On the wire it is ``"namespace:value"``; text without a colon belongs to the
    ``meteorpi`` namespace. The namespace is non-empty and has no colon, so the
    text splits at its first colon and the value may contain further colons.
    """

    value: str
    namespace: str = DEFAULT_NAMESPACE

    def __post_init__(self) -> None:
        for part, label in ((self.namespace, "namespace"), (self.value, "value")):
            try:
                F.identifier(part, "", MAX_ID_STRING_LENGTH)
            except ValidationError as error:
                raise ValidationError("", f"{label} {error.message}") from None
        if ":" in self.namespace:
            raise ValidationError("", "namespace must not contain ':'")

    @classmethod
    def parse(cls, text: Any, path: str = "") -> Self:
        """Parse the wire form ``"ns:value"`` (or ``"value"`` for the meteorpi namespace)."""
        if not isinstance(text, str):
            raise ValidationError(path, "must be a string")
        with F.errors_under(path):
            return _parsed(cls, text)

    def __str__(self) -> str:
        # Always qualified, even for the default namespace, so that every
        # reader splits it the same way.
        return f"{self.namespace}:{self.value}"


@functools.lru_cache(maxsize=1024)
def _parsed(cls: type[NSString], text: str) -> NSString:
    """``text`` parsed, remembered: a batch names the same few types and meta keys
    thousands of times, and each parse checks both parts. NSStrings are immutable, so one
    may be shared; a text that fails is not remembered."""
    namespace, colon, value = text.partition(":")
    if not colon:
        namespace, value = DEFAULT_NAMESPACE, text
    return cls(value, namespace)


def _as_key(key: str | NSString) -> NSString:
    return key if isinstance(key, NSString) else NSString.parse(key, "key")


@dataclass(frozen=True, slots=True)
class Meta:
    """One typed key/value pair attached to an event or a file.

    ``type`` is ``"string"`` (value a str), ``"number"`` (a finite int or
    float) or ``"date"`` (an int time in milliseconds).
    """

    key: NSString
    type: str
    value: str | int | float

    def __post_init__(self) -> None:
        F.instance(self.key, "key", NSString)
        if not isinstance(self.type, str) or self.type not in META_TYPES:
            raise ValidationError("type", "must be one of " + ", ".join(META_TYPES))
        if self.type == "string":
            F.text(self.value, "value", MAX_STRING_LENGTH)
        elif self.type == "number":
            F.number(self.value, "value")
        else:
            F.integer(self.value, "value", 0, MAX_TIME_MS)

    @classmethod
    def string(cls, key: str | NSString, value: str) -> Self:
        """A string meta; ``key`` may be given in its wire form."""
        return cls(_as_key(key), "string", value)

    @classmethod
    def number(cls, key: str | NSString, value: int | float) -> Self:
        """A number meta; ``key`` may be given in its wire form."""
        return cls(_as_key(key), "number", value)

    @classmethod
    def date(cls, key: str | NSString, value: int) -> Self:
        """A date meta holding a time in milliseconds; ``key`` may be given in its wire form."""
        return cls(_as_key(key), "date", value)

    def to_dict(self) -> dict:
        """The wire form ``{"type", "key", "value"}``."""
        return {"type": self.type, "key": str(self.key), "value": self.value}

    @classmethod
    def from_dict(cls, data: Any, path: str = "") -> Self:
        """Parse and validate the wire form; raises only ValidationError."""
        with F.errors_under(path):
            d = F.mapping(data)
            meta_type = F.required(d, "type")
            key = NSString.parse(F.required(d, "key"), "key")
            return cls(key, meta_type, F.required(d, "value"))


class _FlatRecord:
    """Shared wire handling for small records whose fields are all required.

    Subclasses list their fields in ``_FIELDS``; field order is wire order.
    """

    __slots__ = ()
    _FIELDS: ClassVar[tuple[str, ...]] = ()

    def to_dict(self) -> dict:
        """The wire form: every field, under its own name."""
        return {name: getattr(self, name) for name in self._FIELDS}

    @classmethod
    def from_dict(cls, data: Any, path: str = "") -> Self:
        """Parse and validate the wire form; raises only ValidationError."""
        with F.errors_under(path):
            d = F.mapping(data)
            return cls(**{name: F.required(d, name) for name in cls._FIELDS})


@dataclass(frozen=True, slots=True)
class Location(_FlatRecord):
    """Where a camera is: latitude and longitude in degrees, whether GPS fixed it, and its error."""

    _FIELDS: ClassVar[tuple[str, ...]] = ("lat", "long", "gps", "error")

    lat: float
    long: float
    gps: bool
    error: float

    def __post_init__(self) -> None:
        F.number(self.lat, "lat", -90, 90)
        F.number(self.long, "long", -180, 180)
        F.boolean(self.gps, "gps")
        F.number(self.error, "error")


@dataclass(frozen=True, slots=True)
class Orientation(_FlatRecord):
    """Where a camera points: altitude, azimuth, rotation and field width in degrees, with an error."""

    _FIELDS: ClassVar[tuple[str, ...]] = ("alt", "az", "error", "rot", "width")

    alt: float
    az: float
    error: float
    rot: float
    width: float

    def __post_init__(self) -> None:
        for name in self._FIELDS:
            F.number(getattr(self, name), name)


@dataclass(frozen=True, slots=True)
class Point(_FlatRecord):
    """A vertex of a camera's region of interest, in image coordinates."""

    _FIELDS: ClassVar[tuple[str, ...]] = ("x", "y")

    x: float
    y: float

    def __post_init__(self) -> None:
        F.number(self.x, "x")
        F.number(self.y, "y")
