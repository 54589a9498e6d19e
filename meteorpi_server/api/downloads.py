"""GET /files/content/<file_id>[/<file_name>]: a stored file's bytes, resumable by Range."""
from __future__ import annotations

from flask import Blueprint, current_app, send_file

from meteorpi_model import ValidationError, parse_id

from .. import store
from .errors import ApiError
from .security import requires_read_access

blueprint = Blueprint("downloads", __name__)

# A stored file's bytes never change (an import never replaces them), so caches may keep
# them as long as they like; whether a shared cache may is the access policy's call.
CACHE_SECONDS = 365 * 24 * 3600


@blueprint.get("/files/content/<file_id>")
@blueprint.get("/files/content/<file_id>/<file_name>")
@requires_read_access()
def file_content(file_id: str, file_name: str | None = None):
    """Stream one file with its type, length, ETag (its md5) and suggested name.

    Single Range requests (206, or 416 when unsatisfiable) and conditional requests
    (If-None-Match, If-Modified-Since, If-Range) let a consumer resume at its own pace.
    """
    services = current_app.extensions["meteorpi"]
    try:
        file_id = parse_id(file_id, "file_id")
    except ValidationError as error:
        raise ApiError(404, f"no file {file_id!r}: {error.message}", "not_found") from None
    with services.database.read() as session:
        record = store.get_file_record(session, file_id)
    path = services.files.path_for(file_id)
    if record is None or not path.is_file():
        raise ApiError(404, f"this server holds no file {file_id.hex}", "not_found")
    response = send_file(
        path, mimetype=record.mime_type, conditional=True, etag=record.md5 or file_id.hex,
        last_modified=record.file_time / 1000,
        download_name=file_name or record.file_name or file_id.hex, max_age=CACHE_SECONDS)
    response.cache_control.public = services.config.read_access == "public"
    response.cache_control.private = not response.cache_control.public
    response.cache_control.immutable = True
    return response
