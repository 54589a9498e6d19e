"""Reading query strings strictly: unknown or malformed parameters are 400s that name them."""
from __future__ import annotations

import math
import re
from typing import Iterable

from werkzeug.datastructures import MultiDict

from meteorpi_model import ValidationError
from meteorpi_model.search import check_camera_id

from .errors import ApiError

_INTEGER = re.compile(r"-?[0-9]{1,18}")
_NUMBER = re.compile(r"-?[0-9]{1,18}(\.[0-9]{0,18})?([eE][-+]?[0-9]{1,3})?")
_TRUE = {"1", "true", "yes"}
_FALSE = {"0", "false", "no", ""}


def bad_parameter(name: str, message: str) -> ApiError:
    """A 400 saying what is wrong with query parameter ``name``."""
    return ApiError(400, f"query parameter '{name}' {message}", "bad_parameter", field=name)


class QueryParameters:
    """The query string of one request, limited to the parameters a route knows.

    Each getter returns None (or the default) for an absent parameter and raises a 400
    :class:`ApiError` naming the parameter for a malformed one.
    """

    def __init__(self, args: MultiDict, known: Iterable[str]):
        known = tuple(known)
        unknown = sorted(set(args) - set(known))
        if unknown:
            raise ApiError(400, f"unknown query parameter '{unknown[0]}'; this route takes "
                                f"{', '.join(known)}", "bad_parameter", field=unknown[0])
        self.args = args

    def text(self, name: str) -> str | None:
        values = self.args.getlist(name)
        if len(values) > 1:
            raise bad_parameter(name, "is given more than once")
        return values[0] if values else None

    def texts(self, name: str) -> list[str]:
        """Every value of a parameter that may be repeated."""
        return self.args.getlist(name)

    def camera_ids(self, name: str = "camera_id") -> list[str]:
        """Every value of a repeatable camera id parameter, each checked as the searches
        check ``camera_ids`` (an empty or over-long one is a 400, not a filter that
        matches nothing)."""
        values = self.texts(name)
        for value in values:
            try:
                check_camera_id(value, name)
            except ValidationError as error:
                raise bad_parameter(name, error.message) from None
        return values

    def integer(self, name: str, default: int | None = None, low: int | None = None,
                high: int | None = None) -> int | None:
        text = self.text(name)
        if text is None:
            return default
        if not _INTEGER.fullmatch(text):
            raise bad_parameter(name, "must be a whole number")
        value = int(text)
        if (low is not None and value < low) or (high is not None and value > high):
            bounds = (f"at least {low}" if high is None else
                      f"at most {high}" if low is None else f"between {low} and {high}")
            raise bad_parameter(name, f"must be {bounds}")
        return value

    def number(self, name: str) -> int | float | None:
        """A decimal number, kept an int when written as one (the search model checks ranges)."""
        text = self.text(name)
        if text is None:
            return None
        if _INTEGER.fullmatch(text):
            return int(text)
        if not _NUMBER.fullmatch(text) or not math.isfinite(float(text)):
            raise bad_parameter(name, "must be a number")
        return float(text)

    def flag(self, name: str, default: bool = False) -> bool:
        text = self.text(name)
        if text is None:
            return default
        if text.lower() in _TRUE:
            return True
        if text.lower() in _FALSE:
            return False
        raise bad_parameter(name, "must be 1 or 0 (or true or false)")

    def choice(self, name: str, options: tuple[str, ...], default: str) -> str:
        text = self.text(name)
        if text is None:
            return default
        if text not in options:
            raise bad_parameter(name, f"must be one of {', '.join(options)}")
        return text
