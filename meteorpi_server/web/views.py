"""The status page's routes: parsing and replying only.

=============================== ========================================================
``GET /``                       redirects to ``/status``
``GET /status``                 the page (logged out: a redirect to the login form)
``GET|POST /status/login``      the login form (CSRF token); open to anyone, by nature
``POST /status/logout``         ends the session (CSRF token)
``GET /status/data``            the page's data as JSON (logged out: 401 JSON)
``GET /status/stream``          the change feed as Server-Sent Events (logged out: 401)
``GET /status/thumbnails/ID``   a JPEG thumbnail of an image file (logged out: 401)
``GET /status/static/...``      the page's CSS and script
=============================== ========================================================

The page's session is its own (:mod:`.login`), not HTTP Basic: a browser's EventSource
cannot send Basic credentials, and a Basic challenge would pop up the browser's own
password prompt. So refusals here carry no ``WWW-Authenticate: Basic``.
"""
from __future__ import annotations

import functools

from flask import Blueprint, g, jsonify, make_response, redirect, render_template, request, url_for
from werkzeug.utils import send_file

from meteorpi_model import ValidationError, parse_id

from ..api.context import services
from ..api.errors import error_response
from ..api.feed import event_stream
from . import login, overview
from .thumbnails import NoThumbnail, Thumbnails

blueprint = Blueprint("web", __name__, template_folder="templates", static_folder="static",
                      static_url_path="/status/static")

# Thumbnails never change (nor do the files they show); only the user's browser may keep them.
THUMBNAIL_CACHE_SECONDS = 7 * 24 * 3600


@blueprint.record_once
def _install(state) -> None:
    login.install(state.app)


def _page_login_required(view):
    @functools.wraps(view)
    def checked(*args, **kwargs):
        g.status_user = login.current_user()
        if g.status_user is None:
            return redirect(url_for("web.login_form"))
        return view(*args, **kwargs)

    return _session_role(checked)


def _api_login_required(view):
    @functools.wraps(view)
    def checked(*args, **kwargs):
        if login.current_user() is None:
            return error_response(401, "unauthorized",
                                  "log in at /status/login first (this session has ended, or "
                                  "was never started)")
        return view(*args, **kwargs)

    return _session_role(checked)


def _session_role(view):
    """Note on ``view`` who reaches it (as requires_role does, for the OpenAPI document's
    test): users with the page's role, through the page's session."""
    view.meteorpi_role = login.ROLE
    view.meteorpi_authentication = "session"
    return view


def _no_store(body, status: int = 200):
    response = make_response(body, status)
    response.headers["Cache-Control"] = "no-store"
    return response


def _page_data() -> dict:
    return overview.gather(services(), lambda file_id: url_for("web.thumbnail", file_id=file_id))


@blueprint.get("/")
def root():
    return redirect(url_for("web.status_page"))


@blueprint.get("/status")
@_page_login_required
def status_page():
    return _no_store(render_template("status.html", data=_page_data(),
                                     user=g.status_user, logout=login.LogoutForm()))


@blueprint.route("/status/login", methods=["GET", "POST"])
def login_form():
    form = login.LoginForm()
    error, status, retry_after = None, 200, None
    if request.method == "POST":
        if form.validate_on_submit():
            try:
                login.log_in(form.name.data, form.password.data)
            except login.LoginRefused as refused:
                error, status, retry_after = str(refused), refused.status, refused.retry_after
            else:
                return redirect(url_for("web.status_page"), code=303)
        elif form.csrf_token.errors:
            error, status = "the form had expired or was not this page's; please log in again", 400
        else:
            error, status = "give a user name and a password", 400
    elif login.current_user() is not None:
        return redirect(url_for("web.status_page"))
    response = _no_store(render_template("login.html", form=form, error=error), status)
    if retry_after is not None:
        response.headers["Retry-After"] = str(retry_after)
    return response


@blueprint.post("/status/logout")
@_api_login_required
def logout():
    form = login.LogoutForm()
    if not form.validate_on_submit():
        return error_response(400, "bad_request",
                              "the log-out form's CSRF token is missing or wrong; reload the page")
    login.log_out()
    return redirect(url_for("web.login_form"), code=303)


@blueprint.get("/status/data")
@_api_login_required
def status_data():
    return _no_store(jsonify(_page_data()))


@blueprint.get("/status/stream")
@_api_login_required
def status_stream():
    return event_stream()


@blueprint.get("/status/thumbnails/<file_id>.jpg")
@_api_login_required
def thumbnail(file_id: str):
    app_services = services()
    try:
        parsed = parse_id(file_id, "file_id")
    except ValidationError as error:
        return error_response(404, "not_found", f"no file {file_id!r}: {error.message}")
    thumbnails = Thumbnails(app_services.database, app_services.files,
                            app_services.config.cache_dir)
    try:
        path, md5 = thumbnails.path(parsed)
    except NoThumbnail as refused:
        return error_response(refused.status, refused.error, refused.message)
    response = send_file(path, request.environ, mimetype="image/jpeg", conditional=True,
                         etag=f"thumbnail-{md5}", max_age=THUMBNAIL_CACHE_SECONDS)
    response.cache_control.private = True
    response.cache_control.immutable = True
    return response
