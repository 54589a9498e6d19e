"""Logging in to the status page: a form, a signed session cookie, and a check of the
session's user on every request.

The page is for people in a browser, which cannot send HTTP Basic credentials from an
EventSource, so it has its own login: the server's users with the ``user`` role log in
with their name and password through a form (with a CSRF token, Flask-WTF), and the
browser then carries a session cookie (HttpOnly, SameSite=Lax, Secure over HTTPS),
signed with a key kept in the database (:mod:`.session_secret`).

The cookie holds the user's name and a fingerprint of their password hash (an HMAC of
it under the session key: the cookie is signed, not encrypted, so it must not carry the
hash). Each request looks the user up again: a removed user, one whose password changed
or one who lost the ``user`` role is logged out at once, in every worker.
"""
from __future__ import annotations

import datetime
import hashlib
import hmac

from flask import Flask, current_app, request, session
from flask.sessions import SecureCookieSessionInterface
from flask_wtf import FlaskForm
from sqlalchemy import select
from wtforms import PasswordField, StringField
from wtforms.validators import InputRequired, Length

from ..api.context import services
from ..api.request_log import USER_KEY
from ..auth import MAX_NAME_LENGTH
from ..observe import metrics
from ..storage.orm import UserRoleRow, UserRow
from ..throttle import Throttled
from .session_secret import session_secret

#: The role a user needs to see the page (the role that reads everything it shows).
ROLE = "user"
#: How long a login lasts, at most.
LIFETIME = datetime.timedelta(days=30)
#: Paths whose requests use the session, so need its key (read from the database once).
SESSION_PATHS = ("/status",)

_USER = "user"
_FINGERPRINT = "password"


class LoginForm(FlaskForm):
    name = StringField("User name", validators=[InputRequired(), Length(max=MAX_NAME_LENGTH)])
    password = PasswordField("Password", validators=[InputRequired()])


class LogoutForm(FlaskForm):
    """No fields: only the CSRF token, so another site cannot log a user out."""


class DatabaseKeySessionInterface(SecureCookieSessionInterface):
    """Flask's signed-cookie sessions, with the key read from the database when the
    first request that needs a session arrives (not when the app is built: commands
    that build it may run before the schema exists)."""

    def open_session(self, app: Flask, request):
        if app.secret_key is None and request.path.startswith(SESSION_PATHS):
            app.secret_key = session_secret(services(app).database)
        return super().open_session(app, request)

    def get_cookie_secure(self, app: Flask) -> bool:
        # Over HTTPS (as behind the nginx site, which says so in X-Forwarded-Proto) the
        # cookie is never sent in clear; plain HTTP on a LAN still works.
        return (super().get_cookie_secure(app) or request.is_secure
                or request.headers.get("X-Forwarded-Proto", "").lower() == "https")


def install(app: Flask) -> None:
    """Set the app up for the page's sessions (called when the blueprint is registered)."""
    app.session_interface = DatabaseKeySessionInterface()
    app.config.update(SESSION_COOKIE_HTTPONLY=True, SESSION_COOKIE_SAMESITE="Lax",
                      SESSION_COOKIE_NAME="meteorpi_session", SESSION_COOKIE_PATH="/status",
                      PERMANENT_SESSION_LIFETIME=LIFETIME,
                      # A login form left open on a wall screen still works the next day.
                      WTF_CSRF_TIME_LIMIT=None)


def _fingerprint(password_hash: str) -> str:
    return hmac.new(_key(), password_hash.encode("utf-8"), hashlib.sha256).hexdigest()


def _key() -> bytes:
    secret = current_app.secret_key
    return secret.encode("utf-8") if isinstance(secret, str) else secret


def _account(name: str) -> tuple[str, frozenset[str]] | None:
    """The user's password hash and roles, or None if there is no such user."""
    statement = (select(UserRow.password_hash, UserRoleRow.role)
                 .outerjoin(UserRoleRow, UserRoleRow.user_name == UserRow.name)
                 .where(UserRow.name == name))
    with services().database.engine.connect() as connection:
        rows = connection.execute(statement).all()
    if not rows:
        return None
    return rows[0].password_hash, frozenset(row.role for row in rows if row.role)


class LoginRefused(Exception):
    """The form's credentials do not let anyone in; the message is for the form."""

    status = 401
    retry_after: int | None = None


class LoginThrottled(LoginRefused):
    """Too many failed logins from this address or for this name: refused unchecked."""

    status = 429

    def __init__(self, throttled: Throttled):
        subject = "from your address" if throttled.what == "address" else "for this user name"
        super().__init__(f"too many failed logins {subject}; try again in "
                         f"{throttled.retry_after} seconds")
        self.retry_after = throttled.retry_after


def log_in(name: str, password: str) -> None:
    """Start a session for the user, or raise LoginRefused (LoginThrottled when the
    authentication throttle refuses to check the password)."""
    try:
        user = services().users.authenticate(name, password, request.remote_addr)
    except Throttled as throttled:
        raise LoginThrottled(throttled) from None
    if user is None:
        metrics.AUTH_FAILURES.labels("login").inc()
        raise LoginRefused("wrong user name or password")
    if ROLE not in user.roles:
        metrics.AUTH_FAILURES.labels("login").inc()
        raise LoginRefused(f"user {name} may not see this page: it needs the role '{ROLE}'")
    account = _account(name)
    if account is None:  # removed in the meantime
        raise LoginRefused("wrong user name or password")
    session.clear()  # nothing from before the login carries over
    session.permanent = True
    session[_USER] = name
    session[_FINGERPRINT] = _fingerprint(account[0])


def log_out() -> None:
    session.clear()


def current_user() -> str | None:
    """The name of the session's user, if there is one and they may still see the page;
    otherwise None, and the session is cleared."""
    name = session.get(_USER)
    if not isinstance(name, str):
        return None
    account = _account(name)
    if (account is None or ROLE not in account[1]
            or not hmac.compare_digest(str(session.get(_FINGERPRINT, "")),
                                       _fingerprint(account[0]))):
        session.clear()
        return None
    request.environ[USER_KEY] = name  # for the request's log line
    return name
