"""Protocol v2, batched replication: /import/batch/plan, /statuses, /files and /records."""
from __future__ import annotations

import io

from flask import Blueprint, jsonify, request
from werkzeug.http import parse_options_header

from .. import protocol
from ..imports.batch import BatchError
from ..imports.bundles import BundleError
from ..storage.files import IncompleteUpload
from .context import services as app_services
from .errors import ApiError
from .importer import origin_server
from .security import current_user, requires_role
from .uploads import body_read_timeout, read_json

blueprint = Blueprint("batch", __name__)


def _services():
    """The app's services, when it offers batches (404 otherwise)."""
    services = app_services()
    if services.batch is None:
        raise ApiError(404, "this server does not offer batched replication (protocol v2)",
                       "not_found")
    return services


def _run(operation, *args):
    services = _services()
    document = read_json(request, services.config.max_json_bytes)
    try:
        return jsonify(operation(services.batch)(document, *args))
    except BatchError as error:
        details = {"field": error.field} if error.field else {}
        raise ApiError(400, error.message, "bad_batch", **details) from None


def _sender():
    """Who sends the batch: the exporter's user here, and its server (if it says)."""
    return current_user().name, origin_server()


@blueprint.post("/import/batch/plan")
@requires_role("import")
def plan():
    """Which of a batch of entities the server holds, and what the rest need."""
    _services().sweep.maybe_run()  # stale uploads go even on a server that only gets batches
    return _run(lambda batch: batch.plan)


@blueprint.post("/import/batch/statuses")
@requires_role("import")
def statuses():
    """Store a batch of camera statuses."""
    return _run(lambda batch: batch.store_statuses, *_sender())


@blueprint.post("/import/batch/records")
@requires_role("import")
def records():
    """Store a batch of events and stand-alone file records, each atomically."""
    return _run(lambda batch: batch.store_records, *_sender())


@blueprint.post("/import/batch/files")
@requires_role("import")
def files():
    """Store the bytes of many small files sent back to back in one body (a bundle)."""
    services = _services()
    if parse_options_header(request.headers.get("Content-Type", ""))[0] != protocol.BUNDLE_MEDIA_TYPE:
        raise ApiError(415, f"a file bundle must be sent as {protocol.BUNDLE_MEDIA_TYPE}",
                       "unsupported_media_type")
    limit = services.config.batch_max_bundle_bytes
    if request.content_length is None:
        raise ApiError(411, "a file bundle needs a Content-Length", "length_required")
    if request.content_length > limit:
        raise ApiError(413, f"a file bundle may be at most {limit} bytes; send smaller bundles "
                            "or large files by resumable upload", "too_large", limit=limit)
    body = request.stream
    if isinstance(body, io.RawIOBase):  # werkzeug's LimitedStream: lines one byte at a time
        body = io.BufferedReader(body, 1 << 20)
    try:
        with body_read_timeout(request, services.config.upload_read_timeout_seconds):
            return jsonify(services.batch.store_files(body, *_sender()))
    except BundleError as error:
        raise ApiError(400, f"the file bundle is malformed: {error}", "bad_bundle") from None
    except IncompleteUpload as error:
        raise ApiError(400, str(error), "incomplete_upload") from None
