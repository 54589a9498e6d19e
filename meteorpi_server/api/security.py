"""HTTP Basic authentication and per-route roles (Flask-HTTPAuth).

Every route that changes anything must be decorated with :func:`requires_role`; a test
enumerates the app's routes and fails for any write route that answers without
credentials.
"""
from __future__ import annotations

import functools

from flask import g, request
from flask_httpauth import HTTPBasicAuth

from ..auth import User
from ..observe import metrics
from ..throttle import Throttled
from .context import services
from .errors import ApiError, error_response
from .request_log import USER_KEY

basic_auth = HTTPBasicAuth(realm="meteorpi")


@basic_auth.verify_password
def _verify(name: str, password: str) -> User | None:
    if not name:
        return None
    try:
        user = services().users.authenticate(name, password, request.remote_addr)
    except Throttled as throttled:
        raise throttled_error(throttled) from None
    if user is not None:  # for the request's log line; a failed attempt's name is not logged
        request.environ[USER_KEY] = user.name
    return user


def throttled_error(throttled: Throttled) -> ApiError:
    """The 429 for an attempt refused by the authentication throttle."""
    return ApiError(429, str(throttled), "too_many_requests",
                    headers={"Retry-After": str(throttled.retry_after)},
                    retry_after=throttled.retry_after)


@basic_auth.get_user_roles
def _roles(user: User):
    return list(user.roles)


@basic_auth.error_handler
def _auth_error(status: int):
    metrics.AUTH_FAILURES.labels("unauthorized" if status == 401 else "forbidden").inc()
    if status == 401:
        return error_response(401, "unauthorized",
                              "send HTTP Basic credentials of a user of this server")
    # flask-httpauth tells its error handler only the status, so the role is taken from
    # where _needing(role) left it for this request.
    role = g.get(_REQUIRED_ROLE)
    if role is None:
        return error_response(status, "forbidden", "this user lacks the role this route needs")
    return error_response(status, "forbidden",
                          f"this route needs the role '{role}', which this user does not have",
                          role=role)


_REQUIRED_ROLE = "meteorpi_required_role"


def _needing(role: str, view):
    """``view`` behind login_required(role), noting the role for the 403's message."""
    protected = basic_auth.login_required(role=role)(view)

    @functools.wraps(view)
    def checked(*args, **kwargs):
        setattr(g, _REQUIRED_ROLE, role)
        return protected(*args, **kwargs)

    return checked


#: The attributes on a decorated view that say who may reach it (read by the OpenAPI
#: document's test): the role it needs, or the setting that names its audience.
ROLE_ATTRIBUTE = "meteorpi_role"
ACCESS_ATTRIBUTE = "meteorpi_access_setting"


def requires_role(role: str):
    """Decorate a view so that only authenticated users with ``role`` reach it; others
    get a 403 that names the role."""
    def decorate(view):
        checked = _needing(role, view)
        setattr(checked, ROLE_ATTRIBUTE, role)
        return checked

    return decorate


def requires_access(setting: str):
    """Decorate a read-only view whose audience the setting ``setting`` names: ``public``
    (anyone, without credentials) or a role, whose users reach it.

    The setting is read on each request, from the app serving it.
    """
    def decorate(view):
        @functools.wraps(view)
        def checked(*args, **kwargs):
            audience = getattr(services().config, setting)
            if audience == "public":
                return view(*args, **kwargs)
            return _needing(audience, view)(*args, **kwargs)

        setattr(checked, ACCESS_ATTRIBUTE, setting)
        return checked

    return decorate


def requires_read_access():
    """Decorate a read-only view of the records: users with the ``user`` role reach it,
    or anyone when the ``read_access`` setting is ``public``."""
    return requires_access("read_access")


def current_user() -> User:
    return basic_auth.current_user()
