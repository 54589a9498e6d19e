"""GET /changes (with long polling) and GET /changes/stream (Server-Sent Events).

Each waiting request holds one worker thread (gunicorn's gthread worker): a long poll
for up to ``feed_max_wait_seconds``, a stream for up to ``feed_stream_seconds``. Size
``workers`` x ``threads`` for the readers you expect, on top of the exporters.
"""
from __future__ import annotations

import json
import socket
import time
from typing import Callable

from flask import Blueprint, Response, jsonify, request

from ..observe import metrics
from ..storage import feed
from .context import services
from .errors import ApiError
from .params import QueryParameters, bad_parameter
from .security import requires_read_access

blueprint = Blueprint("feed", __name__)

MAX_LIMIT = 10_000
DEFAULT_LIMIT = 100
# How long a browser's EventSource waits before reconnecting after the stream ends.
RECONNECT_MS = 2000


def _filter(params: QueryParameters) -> feed.ChangeFilter:
    # A filter that names nothing must be refused: read as "no type" or "no camera" it
    # would match nothing while ``last`` moved on past every change, so a reader would
    # skip them for good (and a stream would stay silent).
    types = None
    if params.texts("types"):
        try:
            types = feed.parse_types(params.texts("types"))
        except ValueError as error:
            raise bad_parameter("types", str(error)) from None
        if not types:
            raise bad_parameter("types", f"must name at least one of "
                                         f"{', '.join(feed.ENTITY_TYPES)} (omit it for all)")
    camera_ids = params.camera_ids("camera_id")
    return feed.ChangeFilter(types, frozenset(camera_ids) if camera_ids else None)


@blueprint.get("/changes")
@requires_read_access()
def changes():
    """``{"changes": [...], "last": SEQ, "more": bool}``: the changes after ``since``.

    ``timeout=MS`` waits (up to ``feed_max_wait_seconds``) until there is at least one;
    ``latest=1`` keeps only the newest change of each camera.
    """
    params = QueryParameters(request.args, ("since", "limit", "types", "camera_id",
                                            "timeout", "latest"))
    since = params.integer("since", default=0, low=0)
    limit = params.integer("limit", default=DEFAULT_LIMIT, low=1, high=MAX_LIMIT)
    timeout_ms = params.integer("timeout", default=0, low=0)
    which = _filter(params)
    latest = params.flag("latest")
    app_services = services()
    wait = min(timeout_ms / 1000, app_services.config.feed_max_wait_seconds)
    try:
        if wait:
            with metrics.OPEN_CONNECTIONS.labels("long_poll").track_inprogress():
                page = feed.wait_for_changes(app_services.database, since, limit, wait, which,
                                             latest)
        else:
            page = feed.wait_for_changes(app_services.database, since, limit, 0, which, latest)
    except feed.CursorAhead as error:
        raise _cursor_ahead(error, "since") from None
    return jsonify({"changes": [change.to_dict() for change in page.changes],
                    "last": page.last, "more": page.more})


def _cursor_ahead(error: feed.CursorAhead, field: str) -> ApiError:
    return ApiError(400, str(error), "cursor_ahead", field=field, newest=error.newest)


def _resume_point(params: QueryParameters) -> int:
    """``Last-Event-ID`` (sent by a reconnecting EventSource) wins over ``since``."""
    since = params.integer("since", default=0, low=0)
    header = (request.headers.get("Last-Event-ID") or "").strip()
    if not header:
        return since
    if not (header.isascii() and header.isdigit() and len(header) <= 18):
        raise ApiError(400, "the Last-Event-ID header must be a sequence number this "
                            "stream sent", "bad_header", field="Last-Event-ID")
    return int(header)


def _client_gone_check(environ) -> Callable[[], bool]:
    """A check that the client closed its connection, where the server lets us look.

    Without one, a stream whose client left holds its thread until the next heartbeat
    fails to send. gunicorn hands us the socket: a peek that reads end-of-file means the
    client has gone (a TLS socket cannot be peeked; the heartbeat covers that case).
    """
    connection = environ.get("gunicorn.socket")
    if connection is None:
        return lambda: False

    def gone() -> bool:
        try:
            return connection.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b""
        except (BlockingIOError, InterruptedError, ValueError):
            return False
        except OSError:
            return True

    return gone


@blueprint.get("/changes/stream")
@requires_read_access()
def change_stream():
    """The changes after ``since`` (or ``Last-Event-ID``) and then each new one as it is
    stored, as Server-Sent Events; a heartbeat comment after each quiet spell."""
    return event_stream()


def event_stream() -> Response:
    """The reply of :func:`change_stream` to the current request, whose credentials the
    caller has checked (the status page's stream, which a session authenticates, also
    answers with it)."""
    params = QueryParameters(request.args, ("since", "types", "camera_id"))
    since = _resume_point(params)
    which = _filter(params)
    app_services = services()
    config = app_services.config
    with app_services.database.read() as session:
        newest = feed.newest_sequence(session)
    if since > newest:
        field = "Last-Event-ID" if request.headers.get("Last-Event-ID") else "since"
        raise _cursor_ahead(feed.CursorAhead(since, newest), field)

    # The stream ends after a while so that a restarting worker is not held up and a
    # client re-authenticates now and then; EventSource reconnects by itself.
    deadline = time.monotonic() + config.feed_stream_seconds
    client_gone = _client_gone_check(request.environ)

    def finished() -> bool:
        return time.monotonic() >= deadline or client_gone()

    def events():
        with metrics.OPEN_CONNECTIONS.labels("stream").track_inprogress():
            yield from changes()

    def changes():
        yield f"retry: {RECONNECT_MS}\n\n"
        try:
            for change in feed.follow_changes(app_services.database, since, which,
                                              stop=finished,
                                              idle_seconds=config.feed_heartbeat_seconds):
                if change is None:
                    yield ": heartbeat\n\n"
                else:
                    data = json.dumps(change.to_dict(), separators=(",", ":"))
                    yield f"id: {change.sequence}\nevent: change\ndata: {data}\n\n"
        except feed.CursorAhead as error:
            # The feed went back under the stream (a restore): say so, and end. A client
            # reconnecting with its Last-Event-ID gets the 400 above.
            data = json.dumps({"error": "cursor_ahead", "message": str(error),
                               "newest": error.newest}, separators=(",", ":"))
            yield f"event: error\ndata: {data}\n\n"

    return Response(events(), mimetype="text/event-stream",
                    headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
