"""Export configurations kept in the database: add, read, change and remove them.

Functions take a SQLAlchemy session (no Flask); writes expect ``Database.write()``.
The target's password is stored because it must be sent to the target, but nothing here
ever puts it in a message, a log line or :meth:`ExportView.to_dict`.
"""
from __future__ import annotations

import re
import uuid
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from meteorpi_model import EventSearch, ExportConfiguration, FileSearch, ValidationError

from ..storage.orm import ExportConfigRow, ExportTaskRow
from ..storage.store import now_ms
from .errors import ConfigExists, ConfigNotFound, ExportConfigError  # noqa: F401 (re-exported)

# Names appear in URLs (/exports/<name>) and on command lines, so they stay plain.
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,254}")
ERROR_TEXT_LIMIT = 2000


def clip(text: str) -> str:
    """An error message short enough for the database's error columns."""
    return text if len(text) <= ERROR_TEXT_LIMIT else text[:ERROR_TEXT_LIMIT - 3] + "..."


# Names that are paths of the API under /exports/ (GET /exports/status), which a
# configuration of that name could not be shown at.
RESERVED_NAMES = frozenset({"status"})


def check_name(name: Any) -> str:
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise ValidationError("name", "must be 1-255 letters, digits, '.', '_' or '-', "
                                      "starting with a letter or digit")
    if name in RESERVED_NAMES:
        raise ValidationError("name", f"'{name}' is reserved (GET /exports/{name} is "
                                      "the status of every configuration); choose another")
    return name


def check_target_url(url: str) -> str:
    """Credentials inside the URL would be shown wherever the URL is: refuse them."""
    parts = urlsplit(url)
    if parts.username is not None or parts.password is not None:
        raise ValidationError("target_url", "must not contain a user or password; give them "
                                            "as user_id and password instead")
    return url


def search_from_row(row: ExportConfigRow) -> EventSearch | FileSearch:
    search_class = EventSearch if row.export_type == "event" else FileSearch
    return search_class.from_dict(row.search, "search")


@dataclass(frozen=True)
class ExportView:
    """A configuration with its target's state, as ``export show`` and the API present it."""

    configuration: ExportConfiguration
    created_at: int
    target_server_id: uuid.UUID | None
    target_checked_at: int | None
    consecutive_failures: int
    next_attempt_at: int
    disabled_reason: str | None
    last_success_at: int | None
    last_error: str | None
    last_error_at: int | None
    lease_owner: str | None
    lease_expires_at: int | None
    entities_sent: int = 0
    files_sent: int = 0
    bytes_sent: int = 0

    @property
    def name(self) -> str:
        return self.configuration.name

    @property
    def config_id(self) -> uuid.UUID:
        return self.configuration.config_id

    def state(self, now: int | None = None) -> str:
        """``disabled``, ``backing off`` (after failures, until next_attempt_at) or ``enabled``."""
        now = now_ms() if now is None else now
        if not self.configuration.enabled:
            return "disabled"
        if self.consecutive_failures and self.next_attempt_at > now:
            return "backing off"
        return "enabled"

    @property
    def disabled_by_failure(self) -> bool:
        """Disabled by the exporter (failures in a row, a target that is this server),
        not by an administrator: someone has to look into it and enable it again."""
        return (not self.configuration.enabled and self.disabled_reason is not None
                and self.disabled_reason != DISABLED_BY_ADMIN)

    def to_dict(self) -> dict:
        """Everything but the password (only whether one is set)."""
        data = self.configuration.to_dict(include_password=False)
        data.update(
            password_set=bool(self.configuration.password),
            state=self.state(),
            created_at=self.created_at,
            target_server_id=self.target_server_id.hex if self.target_server_id else None,
            target_checked_at=self.target_checked_at,
            consecutive_failures=self.consecutive_failures,
            next_attempt_at=self.next_attempt_at or None,
            disabled_reason=self.disabled_reason,
            last_success_at=self.last_success_at,
            last_error=self.last_error,
            last_error_at=self.last_error_at,
            sent={"entities": self.entities_sent, "files": self.files_sent,
                  "bytes": self.bytes_sent},
        )
        return data


def configuration_from_row(row: ExportConfigRow) -> ExportConfiguration:
    return ExportConfiguration(
        config_id=row.config_id, name=row.name, target_url=row.target_url,
        user_id=row.user_id, password=row.password, search=search_from_row(row),
        enabled=row.enabled, description=row.description)


def view_from_row(row: ExportConfigRow) -> ExportView:
    return ExportView(
        configuration=configuration_from_row(row), created_at=row.created_at,
        target_server_id=row.target_server_id, target_checked_at=row.target_checked_at,
        consecutive_failures=row.consecutive_failures, next_attempt_at=row.next_attempt_at,
        disabled_reason=row.disabled_reason, last_success_at=row.last_success_at,
        last_error=row.last_error, last_error_at=row.last_error_at,
        lease_owner=row.lease_owner, lease_expires_at=row.lease_expires_at,
        entities_sent=row.entities_sent or 0, files_sent=row.files_sent or 0,
        bytes_sent=row.bytes_sent or 0)


def _search_document(search: EventSearch | FileSearch) -> dict:
    # Every matching record is exported: a search's page size and offset mean nothing here.
    document = search.to_dict()
    document.pop("limit", None)
    document.pop("skip", None)
    return document


def add(session: Session, configuration: ExportConfiguration) -> ExportView:
    """Store a new configuration; raises ConfigExists or ValidationError."""
    check_name(configuration.name)
    check_target_url(configuration.target_url)
    if session.scalar(select(ExportConfigRow.config_id)
                      .where(ExportConfigRow.name == configuration.name)) is not None:
        raise ConfigExists(configuration.name)
    holder = session.scalar(select(ExportConfigRow.name)
                            .where(ExportConfigRow.config_id == configuration.config_id))
    if holder is not None:  # a client may choose the id, so it may choose a taken one
        raise ConfigExists(holder, configuration.config_id.hex)
    row = ExportConfigRow(
        config_id=configuration.config_id, name=configuration.name,
        description=configuration.description, target_url=configuration.target_url,
        user_id=configuration.user_id, password=configuration.password,
        export_type=configuration.type, search=_search_document(configuration.search),
        enabled=configuration.enabled, created_at=now_ms(), consecutive_failures=0,
        next_attempt_at=0)
    session.add(row)
    session.flush()
    return view_from_row(row)


def get_row(session: Session, name: str, for_update: bool = False) -> ExportConfigRow:
    statement = select(ExportConfigRow).where(ExportConfigRow.name == name)
    if for_update:
        statement = statement.with_for_update()
    row = session.scalar(statement)
    if row is None:
        raise ConfigNotFound(name)
    return row


def get(session: Session, name: str) -> ExportView:
    return view_from_row(get_row(session, name))


def list_views(session: Session) -> list[ExportView]:
    rows = session.scalars(select(ExportConfigRow).order_by(ExportConfigRow.name))
    return [view_from_row(row) for row in rows]


def enable(session: Session, name: str) -> ExportView:
    """Enable a configuration, forgetting its failures so it is tried at once."""
    row = get_row(session, name, for_update=True)
    row.enabled = True
    row.disabled_reason = None
    row.consecutive_failures = 0
    row.next_attempt_at = 0
    session.flush()
    return view_from_row(row)


#: Why a configuration an administrator disabled is disabled (any other reason is a
#: failure that disabled it, which someone has to look into).
DISABLED_BY_ADMIN = "disabled by an administrator"


def disable(session: Session, name: str, reason: str = DISABLED_BY_ADMIN) -> ExportView:
    row = get_row(session, name, for_update=True)
    row.enabled = False
    row.disabled_reason = clip(reason)
    session.flush()
    return view_from_row(row)


# Fields an administrator may change after creation. The name and the type stay: tasks
# and scripts refer to a configuration by them.
CHANGEABLE = ("enabled", "description", "target_url", "user_id", "password")


def update(session: Session, name: str, changes: dict[str, Any],
           search: EventSearch | FileSearch | None = None) -> ExportView:
    """Change some of :data:`CHANGEABLE`, and the ``search`` if given (of the same kind:
    events or stand-alone files); the result is validated as a whole before anything is
    written. A new target or credentials are tried at once, without waiting out a back-off.

    New matches of a changed search are marked on the next pass; a caller that changes
    the search calls ``marking.unmark`` in the same transaction, which drops the tasks of
    records it no longer matches.
    """
    unknown = sorted(set(changes) - set(CHANGEABLE))
    if unknown:
        raise ValidationError(unknown[0], "cannot be changed; changeable fields are "
                                          + ", ".join(CHANGEABLE))
    row = get_row(session, name, for_update=True)
    current = configuration_from_row(row)
    if search is not None and type(search) is not type(current.search):
        kind = "events" if isinstance(current.search, EventSearch) else "stand-alone files"
        raise ValidationError("search", f"must select {kind}, as the configuration does "
                                        "(a configuration's kind cannot change)")
    values = {field: getattr(current, field) for field in CHANGEABLE}
    values.update(changes)
    changed = ExportConfiguration(config_id=current.config_id, name=current.name,
                                  search=search if search is not None else current.search,
                                  **values)
    check_target_url(changed.target_url)
    if (changed.target_url, changed.user_id, changed.password) != (
            current.target_url, current.user_id, current.password):
        # The operator fixed what was failing (a password, a URL): no reason to wait.
        row.next_attempt_at = 0
    if search is not None:
        row.search = _search_document(search)
    if changed.enabled and not current.enabled:
        enable(session, name)
    elif not changed.enabled and current.enabled:
        disable(session, name)
    row.description = changed.description
    row.user_id = changed.user_id
    row.password = changed.password
    if changed.target_url != row.target_url:
        row.target_url = changed.target_url
        # Perhaps another server now: ask it who it is before marking anything more.
        row.target_server_id = None
        row.target_checked_at = None
    session.flush()
    return view_from_row(row)


def remove(session: Session, name: str) -> None:
    """Remove a configuration and its tasks."""
    row = get_row(session, name, for_update=True)
    session.execute(delete(ExportTaskRow).where(ExportTaskRow.config_id == row.config_id))
    session.delete(row)
    session.flush()
