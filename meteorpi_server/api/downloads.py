"""GET /files/content/<file_id>[/<file_name>]: a stored file's bytes, resumable by Range."""
from __future__ import annotations

import unicodedata
from datetime import datetime, timezone

from flask import Blueprint, current_app, redirect, request
from werkzeug.datastructures import Headers
from werkzeug.exceptions import RequestedRangeNotSatisfiable
from werkzeug.http import (
    is_resource_modified,
    parse_date,
    parse_etags,
    parse_range_header,
)
from werkzeug.utils import send_file

from meteorpi_model import ValidationError, parse_id

from ..storage import store
from .context import services
from .errors import ApiError
from .security import requires_read_access

blueprint = Blueprint("downloads", __name__)

# A stored file's bytes never change (an import never replaces them), so caches may keep
# them as long as they like; whether a shared cache may is the access policy's call.
CACHE_SECONDS = 365 * 24 * 3600
# An HTTP date reaches year 9999 at most; a file may be dated later (any time the model
# takes), so Last-Modified stops there rather than failing.
LATEST_HTTP_DATE = datetime(9999, 12, 31, 23, 59, 59, tzinfo=timezone.utc)
EARLIEST_HTTP_DATE = datetime(1, 1, 1, tzinfo=timezone.utc)


@blueprint.get("/files/content/<file_id>")
@blueprint.get("/files/content/<file_id>/<file_name>")
@requires_read_access()
def file_content(file_id: str, file_name: str | None = None):
    """Stream one file with its type, length, ETag (its md5) and suggested name.

    Conditional requests are answered in RFC 9110's order: If-Match, If-Unmodified-Since
    (412 when they fail), If-None-Match, If-Modified-Since (304), then If-Range and a
    single byte Range (206, or 416 when unsatisfiable). A Range this server does not
    serve (several ranges, another unit, bad syntax) is ignored: the whole file, 200.
    """
    app_services = services()
    try:
        file_id = parse_id(file_id, "file_id")
    except ValidationError as error:
        raise ApiError(404, f"no file {file_id!r}: {error.message}", "not_found") from None
    with app_services.database.read() as session:
        record = store.get_file_record(session, file_id)
    files = app_services.files
    found = files.stat(file_id) if record is not None else None
    if found is None:
        raise ApiError(404, f"this server holds no file {file_id.hex}", "not_found")
    etag = record.md5 or file_id.hex
    last_modified = _http_date(record.file_time)
    environ = _environ_for_send_file(etag, last_modified)
    name = _suggested_name(file_name) or record.file_name or file_id.hex
    if files.kind == "local":
        response = send_file(
            files.path_for(file_id), environ, mimetype=record.mime_type, conditional=True,
            etag=etag, last_modified=last_modified, max_age=CACHE_SECONDS, download_name=name,
            use_x_sendfile=current_app.config["USE_X_SENDFILE"],
            response_class=current_app.response_class)
    elif app_services.config.s3_presigned_downloads_seconds:
        return _presigned_redirect(files, file_id, record, name)
    else:
        response = _send_object(files, file_id, found[0], environ, record, etag,
                                last_modified, name)
    response.cache_control.public = app_services.config.read_access == "public"
    response.cache_control.private = not response.cache_control.public
    response.cache_control.immutable = True
    return response


def _send_object(files, file_id, size: int, environ: dict, record, etag: str,
                 last_modified: datetime, name: str):
    """Stream an object from the bucket, answering conditional and Range requests as for a
    file on disk: werkzeug's send_file learns the size from the bucket (it cannot from a
    stream) and seeks the reader, which fetches only the range it sends."""
    # werkzeug's own file wrapper seeks to a Range's start; a server's wsgi.file_wrapper
    # may instead read and drop every byte before it.
    environ.pop("wsgi.file_wrapper", None)
    reader = files.open(file_id, size)
    response = send_file(
        reader, environ, mimetype=record.mime_type, conditional=False, etag=etag,
        last_modified=last_modified, max_age=CACHE_SECONDS, download_name=name,
        response_class=current_app.response_class)
    response.content_length = size
    try:
        return response.make_conditional(environ, accept_ranges=True, complete_length=size)
    except RequestedRangeNotSatisfiable:
        reader.close()
        raise


def _presigned_redirect(files, file_id, record, name: str):
    """A redirect to the bucket itself (s3_presigned_downloads_seconds): the bytes then
    never pass through this server; the URL names the type and the suggested name."""
    disposition = Headers()
    disposition.set("Content-Disposition", "inline", filename=name)
    url = files.presigned_url(
        file_id, services().config.s3_presigned_downloads_seconds,
        ResponseContentType=record.mime_type or "application/octet-stream",
        ResponseContentDisposition=disposition["Content-Disposition"])
    response = redirect(url, 302)
    response.headers["Cache-Control"] = "no-store"
    return response


def _http_date(time_ms: int) -> datetime:
    seconds = time_ms // 1000
    if seconds >= LATEST_HTTP_DATE.timestamp():
        return LATEST_HTTP_DATE
    if seconds <= EARLIEST_HTTP_DATE.timestamp():
        return EARLIEST_HTTP_DATE
    return datetime.fromtimestamp(seconds, timezone.utc)


def _suggested_name(name: str | None) -> str | None:
    """The name from the URL without control characters, which no header may carry."""
    if name is None:
        return None
    return "".join(char for char in name if unicodedata.category(char) != "Cc") or None


def _environ_for_send_file(etag: str, last_modified: datetime) -> dict:
    """The request's environ with what werkzeug's send_file would get wrong settled here.

    werkzeug sends a failed If-Match as a 412 with the whole file as its body, ignores
    If-Unmodified-Since, lets a Range win over a matching If-None-Match, answers 416 to a
    Range it cannot serve (RFC 9110 says to ignore such a Range), and lets a weak or an
    older If-Range validator through (RFC 9110: only the strong ETag or the exact date).
    """
    environ = dict(request.environ)
    if_match = environ.pop("HTTP_IF_MATCH", None)
    if_unmodified_since = environ.pop("HTTP_IF_UNMODIFIED_SINCE", None)
    if_range = environ.pop("HTTP_IF_RANGE", None)
    if if_match is not None:
        if not parse_etags(if_match).contains(etag):  # strong comparison; '*' matches
            raise ApiError(412, f"If-Match: the file's ETag is \"{etag}\"", "precondition_failed")
    elif (since := parse_date(if_unmodified_since)) is not None and last_modified > since:
        raise ApiError(412, "If-Unmodified-Since: the file is newer than that",
                       "precondition_failed")
    if "HTTP_RANGE" in environ:
        wanted = parse_range_header(environ["HTTP_RANGE"])
        # If-Match is gone from environ, so this weighs If-None-Match, If-Modified-Since.
        not_modified = not is_resource_modified(environ, etag=etag, last_modified=last_modified)
        if (not_modified or wanted is None or wanted.units != "bytes" or len(wanted.ranges) != 1
                or not _if_range_holds(if_range, etag, last_modified)):
            del environ["HTTP_RANGE"]
    return environ


def _if_range_holds(if_range: str | None, etag: str, last_modified: datetime) -> bool:
    """Whether a Range may be served: no If-Range, or one naming this very file."""
    if if_range is None:
        return True
    if_range = if_range.strip()
    if if_range.startswith(("\"", "W/")):
        return if_range == f'"{etag}"'
    return parse_date(if_range) == last_modified
