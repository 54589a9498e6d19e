"""Checks shared by the entity, search and export classes (private).

Every checker takes the value and the path to report, returns the value when
it is acceptable, and otherwise raises ValidationError. They never put the
value itself in a message: formatting a hostile value can fail (Python refuses
to print integers of more than 4300 digits) or flood a log.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

from .errors import ValidationError
from .limits import MAX_ID_STRING_LENGTH, MAX_SAFE_INTEGER

T = TypeVar("T")

# RFC 9110 token characters; parameters such as "; charset=" are not part of
# a file's type.
_MIME_TYPE = re.compile(r"[-!#$%&'*+.^_`|~0-9A-Za-z]+/[-!#$%&'*+.^_`|~0-9A-Za-z]+")
# Unicode category Cc: the C0 controls, DEL and the C1 controls.
_CONTROL_CHARACTER = re.compile(r"[\x00-\x1f\x7f-\x9f]")


@contextmanager
def errors_under(prefix: str) -> Iterator[None]:
    """Re-raise ValidationErrors from the block with ``prefix`` prepended to their path."""
    try:
        yield
    except ValidationError as error:
        raise error.prefixed(prefix) from None


def mapping(value: Any, path: str = "") -> dict:
    if not isinstance(value, dict):
        raise ValidationError(path, "must be an object")
    return value


def required(data: dict, key: str) -> Any:
    """The value of ``key``; a JSON ``null`` counts as missing."""
    value = data.get(key)
    if value is None:
        raise ValidationError(key, "is required")
    return value


def is_int(value: Any) -> bool:
    # bool subclasses int, but true/false is never a valid count or time.
    return isinstance(value, int) and not isinstance(value, bool)


def integer(value: Any, path: str, low: int, high: int) -> int:
    if not is_int(value):
        raise ValidationError(path, "must be an integer")
    if not low <= value <= high:
        raise ValidationError(path, f"must be between {low} and {high}")
    return value


def number(value: Any, path: str, low: float | None = None, high: float | None = None) -> int | float:
    """An int or float (never a bool), finite, optionally within [low, high]."""
    if is_int(value):
        # Checked first: math.isfinite() overflows on huge ints.
        if abs(value) > MAX_SAFE_INTEGER:
            raise ValidationError(path, f"must be at most {MAX_SAFE_INTEGER} in magnitude")
    elif isinstance(value, float):
        if not math.isfinite(value):
            raise ValidationError(path, "must be a finite number")
    else:
        raise ValidationError(path, "must be a number")
    if (low is not None and value < low) or (high is not None and value > high):
        raise ValidationError(path, f"must be between {low} and {high}")
    return value


def boolean(value: Any, path: str) -> bool:
    if not isinstance(value, bool):
        raise ValidationError(path, "must be true or false")
    return value


def text(value: Any, path: str, max_length: int, *, allow_empty: bool = True,
         allow_control: bool = True) -> str:
    """A string of at most ``max_length`` characters that can be stored anywhere.

    NUL is always refused (PostgreSQL text cannot hold it) and so are lone
    surrogates (they cannot be encoded as UTF-8, which every store needs).
    """
    if not isinstance(value, str):
        raise ValidationError(path, "must be a string")
    if len(value) > max_length:
        raise ValidationError(path, f"must be at most {max_length} characters")
    if not value and not allow_empty:
        raise ValidationError(path, "must not be empty")
    if "\x00" in value:
        raise ValidationError(path, "must not contain NUL characters")
    if not allow_control and _CONTROL_CHARACTER.search(value):
        raise ValidationError(path, "must not contain control characters")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValidationError(path, "must not contain unpaired surrogates") from None
    return value


def identifier(value: Any, path: str, max_length: int = MAX_ID_STRING_LENGTH) -> str:
    """A non-empty single-line name such as a camera id."""
    return text(value, path, max_length, allow_empty=False, allow_control=False)


def mime_type(value: Any, path: str) -> str:
    """A bare ``type/subtype`` MIME type."""
    identifier(value, path)
    if not _MIME_TYPE.fullmatch(value):
        raise ValidationError(path, "must be a MIME type such as image/png")
    return value


def array(value: Any, path: str, max_items: int) -> list:
    if not isinstance(value, list):
        raise ValidationError(path, "must be a list")
    if len(value) > max_items:
        raise ValidationError(path, f"must have at most {max_items} entries")
    return value


def parse_items(value: Any, path: str, max_items: int, parse: Callable[[Any, str], T]) -> list[T]:
    """Parse each entry of a JSON list; the length is checked before any parsing."""
    return [parse(item, f"{path}[{index}]") for index, item in enumerate(array(value, path, max_items))]


def instances(value: Any, path: str, max_items: int, cls: type) -> list:
    """Check a constructor argument is a list of ``cls`` (tuples are refused so equality stays exact)."""
    for index, item in enumerate(array(value, path, max_items)):
        if not isinstance(item, cls):
            raise ValidationError(f"{path}[{index}]", f"must be a {cls.__name__}")
    return value


def instance(value: Any, path: str, cls: type | tuple[type, ...]) -> Any:
    if not isinstance(value, cls):
        names = " or ".join(c.__name__ for c in (cls if isinstance(cls, tuple) else (cls,)))
        raise ValidationError(path, f"must be a {names}")
    return value


def optional(value: Any, path: str, check: Callable[..., T], *args: Any) -> T | None:
    return None if value is None else check(value, path, *args)
