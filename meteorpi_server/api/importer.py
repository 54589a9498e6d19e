"""POST /import and POST /import/data/<file_id>/<md5>: the legacy import protocol."""
from __future__ import annotations

import re

from flask import Blueprint, jsonify, request

from meteorpi_model import ValidationError, parse_id, parse_md5

from .. import protocol
from ..imports.resumable import Checksum, LengthMismatch, UploadError
from ..storage.files import IncompleteUpload
from .context import services as app_services
from .errors import ApiError, error_response
from .security import current_user, requires_role
from .uploads import MultipartFileField, body_read_timeout, read_json

blueprint = Blueprint("importer", __name__)


def origin_server():
    """The sending server's id from the ``Meteorpi-Origin`` header (legacy nodes send none)."""
    value = request.headers.get(protocol.ORIGIN_HEADER)
    if value is None:
        return None
    try:
        return parse_id(value, protocol.ORIGIN_HEADER)
    except ValidationError as error:
        raise ApiError(400, str(error), "bad_header", field=protocol.ORIGIN_HEADER) from None


@blueprint.get("/import")
@requires_role("import")
def describe_import():
    """What this server speaks and accepts, for exporters to discover in one request.

    A legacy server answers 405 here, which tells an exporter to use the legacy protocol.
    """
    services = app_services()
    services.sweep.maybe_run()
    return jsonify(services.capabilities())


@blueprint.post("/import")
@requires_role("import")
def import_entity():
    services = app_services()
    # Every import request may trigger the (rate-limited) sweep, not only uploads: a
    # server whose nodes stopped sending files must still clear their abandoned uploads.
    services.sweep.maybe_run()
    document = read_json(request, services.config.max_json_bytes)
    reply = services.importer.handle(document, current_user().name, origin_server())
    return jsonify(reply.to_dict())


@blueprint.post("/import/data/<file_id>/<md5>")
@requires_role("import")
def import_file_data(file_id: str, md5: str):
    """The legacy upload: the whole file as the multipart field ``file``."""
    services = app_services()
    file_id, md5 = _upload_target(file_id, md5)
    services.sweep.maybe_run()
    with body_read_timeout(request, services.config.upload_read_timeout_seconds):
        content = MultipartFileField(request, "file", services.config.max_upload_bytes).open()
        try:
            reply = services.importer.handle_file_data(file_id, md5, content, current_user().name,
                                                       origin_server())
        except IncompleteUpload as error:
            raise ApiError(400, str(error), "incomplete_upload") from None
        content.discard_rest()
    return jsonify(reply.to_dict())


def _upload_target(file_id: str, md5: str):
    try:
        return parse_id(file_id, "file_id"), parse_md5(md5, "md5")
    except ValidationError as error:
        raise ApiError(400, f"{error}: the upload URL is /import/data/<file id>/<md5>",
                       "bad_url", field=error.path) from None


# ASCII digits only: str.isdigit() also takes '²' or '٣', which int() then refuses.
_WHOLE_NUMBER = re.compile(r"[0-9]{1,20}")


def _header_int(name: str) -> int:
    value = request.headers.get(name)
    if value is None or not _WHOLE_NUMBER.fullmatch(value):
        raise ApiError(400, f"a chunk needs the header {name}: a whole number of bytes",
                       "bad_header", field=name)
    return int(value)


def _upload_reply(state, status: int = 200):
    response = jsonify(state.to_dict())
    response.status_code = status
    if state.offset is not None:
        response.headers[protocol.UPLOAD_OFFSET_HEADER] = str(state.offset)
    return response


@blueprint.get("/import/data/<file_id>/<md5>")
@requires_role("import")
def upload_offset(file_id: str, md5: str):
    """How many bytes of a resumable upload the server holds (HEAD gives the same headers)."""
    file_id, md5 = _upload_target(file_id, md5)
    return _upload_reply(app_services().uploads.state(file_id, md5))


@blueprint.patch("/import/data/<file_id>/<md5>")
@requires_role("import")
def upload_chunk(file_id: str, md5: str):
    """Append one chunk of a resumable upload at Upload-Offset."""
    file_id, md5 = _upload_target(file_id, md5)
    if request.mimetype != protocol.RESUMABLE_MEDIA_TYPE:
        raise ApiError(415, f"a chunk's Content-Type must be {protocol.RESUMABLE_MEDIA_TYPE}",
                       "unsupported_media_type")
    offset, length = (_header_int(protocol.UPLOAD_OFFSET_HEADER),
                      _header_int(protocol.UPLOAD_LENGTH_HEADER))
    services = app_services()
    services.sweep.maybe_run()
    checksum_header = request.headers.get(protocol.UPLOAD_CHECKSUM_HEADER)
    try:
        checksum = Checksum.parse(checksum_header) if checksum_header else None
        # The upload's lock is released when append returns or raises, so a silent
        # sender holds it for at most the read timeout.
        with body_read_timeout(request, services.config.upload_read_timeout_seconds):
            state = services.uploads.append(
                file_id, md5, offset, length, request.stream, current_user().name,
                checksum=checksum, chunk_length=request.content_length)
    except UploadError as error:
        details = {} if error.offset is None else {"offset": error.offset}
        if isinstance(error, LengthMismatch):
            details["length"] = error.length
        response = error_response(error.status, error.error, error.message, **details)
        if error.offset is not None:
            response.headers[protocol.UPLOAD_OFFSET_HEADER] = str(error.offset)
        if isinstance(error, LengthMismatch):
            response.headers[protocol.UPLOAD_LENGTH_HEADER] = str(error.length)
        return response
    return _upload_reply(state)
