"""Users, roles and password checks.

A password check with a current algorithm (scrypt) costs tens of milliseconds by design,
and an exporter sends credentials with every request, so checks that succeeded are
remembered for a while in a small per-process cache. The cache key covers the stored
password hash, so changing a password makes the old entries unreachable; roles are read
from the database on every request, so a role change or a removal applies at once.
"""
from __future__ import annotations

import functools
import hashlib
import hmac
import logging
import secrets
import threading
import time
import unicodedata
from collections import OrderedDict
from dataclasses import dataclass

from sqlalchemy import bindparam, func, select
from werkzeug.security import check_password_hash, generate_password_hash

from meteorpi_model import ROLES

from .api.request_log import format_line
from .config import default
from .observe import metrics
from .storage.db import Database
from .storage.orm import UserRoleRow, UserRow
from .storage.store import now_ms
from .throttle import AuthThrottle, Throttled

log = logging.getLogger("meteorpi.auth")

MAX_NAME_LENGTH = 255


@functools.cache
def _dummy_hash() -> str:
    """Checked against unknown user names so that a wrong name costs as much as a wrong
    password. Made on first use, not at import: a hash costs a full scrypt (about 80 ms
    of a core), which every ``meteorpi`` command would otherwise pay at start-up."""
    return generate_password_hash(secrets.token_hex(16))


def _usable_credentials(name: str, password: str) -> bool:
    """Whether ``name`` could be a user's and both are text a database can be asked about.

    A NUL or other control character, an over-long name or a lone surrogate can never
    match a user (``add`` refuses them), and some databases reject such a string with an
    error rather than finding nothing, so these are refused before any query.
    """
    if not name or len(name) > MAX_NAME_LENGTH or "\0" in password:
        return False
    if any(unicodedata.category(char) == "Cc" for char in name):
        return False
    try:
        name.encode("utf-8")
        password.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


class UserError(ValueError):
    """A user cannot be added or changed as asked; the message says why."""


def _check_password(password: str, min_length: int) -> None:
    if not password:
        raise UserError("the password must not be empty")
    # scrypt's HMAC pads the password with NULs, so "pw" and "pw\0" would both match
    # one hash: NULs are refused here and at every check instead.
    if "\0" in password:
        raise UserError("the password must not contain a NUL character")
    try:
        password.encode("utf-8")
    except UnicodeEncodeError:
        raise UserError("the password must be valid text (UTF-8)") from None
    # Exporters store their password in a file, so length costs nobody any typing, and
    # a server on the internet sees guesses at every user name it has.
    if len(password) < min_length:
        raise UserError(f"the password is {len(password)} characters long; it must have at "
                        f"least {min_length} (setting min_password_length)")


@dataclass(frozen=True)
class User:
    name: str
    roles: frozenset[str]
    created_at: int = 0


class VerificationCache:
    """A bounded, thread-safe LRU set of recently verified credentials, each with an expiry.

    Entries are HMACs keyed by a per-process secret, so the cache never holds a password.
    Beside each entry's key (name, stored hash and password) the cache keeps one of the
    name and password alone, so that :meth:`may_contain` can tell before any database
    query that credentials are certainly not remembered (the throttle then refuses them
    at the cost of two HMACs).
    """

    def __init__(self, max_entries: int, lifetime_seconds: float):
        self.max_entries = max_entries
        self.lifetime = lifetime_seconds
        self._secret = secrets.token_bytes(32)
        self._entries: OrderedDict[bytes, tuple[float, bytes]] = OrderedDict()
        self._candidates: dict[bytes, int] = {}  # name-and-password HMAC: entries with it
        self._lock = threading.Lock()

    def _key(self, *parts: str) -> bytes:
        message = "\0".join(parts).encode("utf-8", "surrogatepass")
        return hmac.new(self._secret, message, hashlib.sha256).digest()

    def may_contain(self, name: str, password: str) -> bool:
        """False if no entry (current or expired) is for this name and password."""
        if self.max_entries == 0:
            return False
        return self._key(name, password) in self._candidates

    def contains(self, name: str, password_hash: str, password: str) -> bool:
        if self.max_entries == 0:
            return False
        key = self._key(name, password_hash, password)
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                return False
            if entry[0] < time.monotonic():
                self._remove(key)
                return False
            self._entries.move_to_end(key)
            return True

    def add(self, name: str, password_hash: str, password: str) -> None:
        if self.max_entries == 0:
            return
        key = self._key(name, password_hash, password)
        candidate = self._key(name, password)
        with self._lock:
            if key in self._entries:
                self._remove(key)
            self._entries[key] = (time.monotonic() + self.lifetime, candidate)
            self._candidates[candidate] = self._candidates.get(candidate, 0) + 1
            while len(self._entries) > self.max_entries:
                self._remove(next(iter(self._entries)))

    def _remove(self, key: bytes) -> None:
        _, candidate = self._entries.pop(key)
        if self._candidates[candidate] == 1:
            del self._candidates[candidate]
        else:
            self._candidates[candidate] -= 1

    def __len__(self) -> int:
        return len(self._entries)


# A user's password hash and roles (one row per role), built once: the statement is
# the same for every request.
_ACCOUNT = (select(UserRow.password_hash, UserRow.created_at, UserRoleRow.role)
            .outerjoin(UserRoleRow, UserRoleRow.user_name == UserRow.name)
            .where(UserRow.name == bindparam("name")))


class Users:
    """The user directory in the database, and credential checks against it."""

    def __init__(self, database: Database, cache: VerificationCache,
                 min_password_length: int | None = None, throttle: AuthThrottle | None = None):
        self.database = database
        self.cache = cache
        # Failed attempts are counted and, past its limits, refused before hashing
        # (meteorpi_server.throttle); None: never throttled (the command line's checks).
        self.throttle = throttle
        # Checked when a password is set, never when one is tried: a stricter setting
        # must not lock out users whose older passwords are shorter.
        self.min_password_length = (default("min_password_length")
                                    if min_password_length is None else min_password_length)

    def authenticate(self, name: str, password: str, address: str | None = None) -> User | None:
        """The user if ``password`` is theirs, else None.

        ``address`` is the client's, for the throttle and the log: Throttled is raised,
        without hashing, when it or ``name`` has failed too often lately, unless these
        credentials were verified recently (the cache, which costs no hash); a name's
        failures do not count against an address it logged in from lately (see
        :mod:`.throttle`). Each failure is counted by the throttle and logged.
        """
        if not isinstance(name, str) or not isinstance(password, str):
            return None
        if not _usable_credentials(name, password):
            self._failed(address, name, "unusable_credentials")
            return None
        # Credentials not remembered at all are refused by the throttle before the query,
        # which is most of what a refusal would cost.
        maybe_remembered = self.cache.may_contain(name, password)
        if not maybe_remembered:
            self._check_throttle(address, name)
        # One Core query, not an ORM load: this runs on every request of every exporter.
        with self.database.engine.connect() as connection:
            rows = connection.execute(_ACCOUNT, {"name": name}).all()
        if rows and self.cache.contains(name, rows[0].password_hash, password):
            return User(name, frozenset(row.role for row in rows if row.role), rows[0].created_at)
        if maybe_remembered:  # remembered under another stored hash: the password changed
            self._check_throttle(address, name)
        if not rows:
            check_password_hash(_dummy_hash(), password)
            self._failed(address, name, "unknown_user")
            return None
        password_hash, created_at = rows[0].password_hash, rows[0].created_at
        if not check_password_hash(password_hash, password):
            self._failed(address, name, "wrong_password")
            return None
        self.cache.add(name, password_hash, password)
        if self.throttle is not None:
            self.throttle.succeeded(address, name)
        return User(name, frozenset(row.role for row in rows if row.role), created_at)

    def _check_throttle(self, address: str | None, name: str) -> None:
        if self.throttle is None:
            return
        try:
            self.throttle.check(address, name)
        except Throttled as throttled:
            metrics.AUTH_FAILURES.labels("throttled").inc()
            self._log(address, name, f"throttled_{throttled.what}",
                      retry_after=throttled.retry_after)
            raise

    def _failed(self, address: str | None, name: str, reason: str) -> None:
        if self.throttle is not None:
            self.throttle.failed(address, name)
        self._log(address, name, reason)

    @staticmethod
    def _log(address: str | None, name: str, reason: str, **fields) -> None:
        """One WARNING line per failed or throttled attempt: the address, the name tried
        (never the password) and why."""
        fields = {"address": address or "-", "user": name[:MAX_NAME_LENGTH], "reason": reason,
                  **fields}
        log.warning("authentication failed: %s", format_line(fields, "text"))

    @staticmethod
    def _check_roles(roles) -> list[str]:
        roles = sorted(set(roles))
        unknown = [role for role in roles if role not in ROLES]
        if unknown:
            raise UserError(f"unknown role(s) {', '.join(unknown)}; roles are {', '.join(ROLES)}")
        return roles

    def add(self, name: str, password: str, roles) -> User:
        """Create user ``name``; UserError says why if the name, password (see
        ``min_password_length``) or a role is unacceptable, or the name is taken."""
        if not name or len(name) > MAX_NAME_LENGTH or ":" in name or not name.isprintable():
            raise UserError("a user name is 1 to 255 printable characters without ':'")
        _check_password(password, self.min_password_length)
        roles = self._check_roles(roles)
        with self.database.write() as session:
            if session.get(UserRow, name) is not None:
                raise UserError(f"user {name} already exists")
            created = now_ms()
            session.add(UserRow(name=name, password_hash=generate_password_hash(password),
                                created_at=created,
                                roles=[UserRoleRow(role=role) for role in roles]))
        return User(name, frozenset(roles), created)

    def _require(self, session, name: str) -> UserRow:
        row = session.get(UserRow, name)
        if row is None:
            raise UserError(f"no user named {name}")
        return row

    def set_password(self, name: str, password: str) -> None:
        """Replace the password of user ``name``, checked as :meth:`add` checks it."""
        _check_password(password, self.min_password_length)
        with self.database.write() as session:
            self._require(session, name).password_hash = generate_password_hash(password)

    def set_roles(self, name: str, roles) -> None:
        roles = self._check_roles(roles)
        with self.database.write() as session:
            row = self._require(session, name)
            row.roles = [UserRoleRow(role=role) for role in roles]

    def remove(self, name: str) -> None:
        with self.database.write() as session:
            session.delete(self._require(session, name))

    def list(self) -> list[User]:
        with self.database.read() as session:
            rows = session.scalars(select(UserRow).order_by(UserRow.name))
            return [User(row.name, frozenset(r.role for r in row.roles), row.created_at)
                    for row in rows]

    def count(self) -> int:
        with self.database.read() as session:
            return session.scalar(select(func.count()).select_from(UserRow))
