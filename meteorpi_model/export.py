"""Export configurations: which entities a node sends to which import server."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Any, Self
from urllib.parse import urlsplit

from . import _fields as F
from .errors import ValidationError
from .limits import MAX_ID_STRING_LENGTH, MAX_STRING_LENGTH
from .search import EventSearch, FileSearch
from .values import format_id, parse_id

_SEARCH_CLASSES = {"event": EventSearch, "file": FileSearch}


def _target_url(value: Any, path: str) -> str:
    F.text(value, path, MAX_STRING_LENGTH, allow_empty=False, allow_control=False)
    try:
        parts = urlsplit(value)
        parts.port  # raises ValueError on a malformed port
    except ValueError:
        raise ValidationError(path, "must be a valid URL") from None
    if parts.scheme not in ("http", "https") or not parts.hostname or " " in value:
        raise ValidationError(path, "must be an http:// or https:// URL with a host")
    return value


def _user_id(value: Any, path: str) -> str:
    F.identifier(value, path)
    # HTTP Basic authentication separates the user id from the password
    # with the first colon, so a colon in the user id could never log in.
    if ":" in value:
        raise ValidationError(path, "must not contain ':'")
    return value


@dataclass(slots=True)
class ExportConfiguration:
    """Send every event (or stand-alone file) matching ``search`` to ``target_url``.

    ``target_url`` is the import endpoint (ending in ``/import`` on a Meteor
    Pi server); ``user_id`` and ``password`` are the HTTP Basic credentials
    of a user holding the ``import`` role there.
    """

    config_id: uuid.UUID
    name: str
    target_url: str
    user_id: str
    # Out of repr, so a log line or traceback that shows a configuration never shows it.
    password: str = field(repr=False)
    search: EventSearch | FileSearch
    enabled: bool = True
    description: str = ""

    def __post_init__(self) -> None:
        F.instance(self.config_id, "config_id", uuid.UUID)
        F.identifier(self.name, "name", MAX_ID_STRING_LENGTH)
        _target_url(self.target_url, "target_url")
        _user_id(self.user_id, "user_id")
        F.text(self.password, "password", MAX_STRING_LENGTH)
        F.instance(self.search, "search", (EventSearch, FileSearch))
        F.boolean(self.enabled, "enabled")
        F.text(self.description, "description", MAX_STRING_LENGTH)

    @property
    def type(self) -> str:
        """``"event"`` or ``"file"``: what the search selects, and what is exported."""
        return "event" if isinstance(self.search, EventSearch) else "file"

    def to_dict(self, include_password: bool = False) -> dict:
        """The wire form; the password is left out unless ``include_password``."""
        data: dict[str, Any] = {
            "config_id": format_id(self.config_id),
            "type": self.type,
            "name": self.name,
            "description": self.description,
            "target_url": self.target_url,
            "user_id": self.user_id,
        }
        if include_password:
            data["password"] = self.password
        data["enabled"] = self.enabled
        data["search"] = self.search.to_dict()
        return data

    @classmethod
    def from_dict(cls, data: Any, path: str = "") -> Self:
        """Parse and validate the wire form, password included; raises only ValidationError.

        ``type`` picks the search class that parses ``search``.
        """
        with F.errors_under(path):
            d = F.mapping(data)
            search_type = F.required(d, "type")
            if not isinstance(search_type, str) or search_type not in _SEARCH_CLASSES:
                raise ValidationError("type", "must be one of event, file")
            enabled, description = d.get("enabled"), d.get("description")
            return cls(
                config_id=parse_id(F.required(d, "config_id"), "config_id"),
                name=F.required(d, "name"),
                target_url=F.required(d, "target_url"),
                user_id=F.required(d, "user_id"),
                password=F.required(d, "password"),
                search=_SEARCH_CLASSES[search_type].from_dict(F.required(d, "search"), "search"),
                enabled=True if enabled is None else enabled,
                description="" if description is None else description,
            )
