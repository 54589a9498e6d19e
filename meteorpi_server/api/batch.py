"""Protocol v2, batched replication: /import/batch/plan, /statuses and /records."""
from __future__ import annotations

from flask import Blueprint, current_app, jsonify, request

from ..batch import BatchError
from .errors import ApiError
from .importer import origin_server
from .security import current_user, requires_role
from .uploads import read_json

blueprint = Blueprint("batch", __name__)


def _run(operation, *args):
    services = current_app.extensions["meteorpi"]
    if services.batch is None:
        raise ApiError(404, "this server does not offer batched replication (protocol v2)",
                       "not_found")
    document = read_json(request, services.config.max_json_bytes)
    try:
        return jsonify(operation(services.batch)(document, *args))
    except BatchError as error:
        details = {"field": error.field} if error.field else {}
        raise ApiError(400, error.message, "bad_batch", **details) from None


def _source():
    from ..store import Source

    return Source(current_user().name, origin_server())


@blueprint.post("/import/batch/plan")
@requires_role("import")
def plan():
    """Which of a batch of entities the server holds, and what the rest need."""
    return _run(lambda batch: batch.plan)


@blueprint.post("/import/batch/statuses")
@requires_role("import")
def statuses():
    """Store a batch of camera statuses."""
    return _run(lambda batch: batch.store_statuses, _source())


@blueprint.post("/import/batch/records")
@requires_role("import")
def records():
    """Store a batch of events and stand-alone file records, each atomically."""
    return _run(lambda batch: batch.store_records, _source())
