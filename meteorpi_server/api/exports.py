"""/exports: export configurations and their state, for users with the ``camera_admin`` role.

``GET /exports``                  every configuration with its target's state and backlog
``POST /exports``                 add one (the ExportConfiguration wire form; ``config_id``
                                  optional)
``GET /exports/status``           every configuration's replication state as data: state,
                                  backlog, last success and error, what was sent
                                  (``report.replication_status``; no configuration may be
                                  named ``status``)
``GET /exports/<name>``           one configuration, with its most recent task errors
``PATCH /exports/<name>``         change ``enabled``, ``description``, ``target_url``,
                                  ``user_id`` or ``password``
``DELETE /exports/<name>``        remove it and its tasks
``POST /exports/<name>/retry``    put its failed tasks back in the queue

The password is accepted but never returned: replies say only ``"password_set"``.
"""
from __future__ import annotations

import uuid

from flask import Blueprint, jsonify, request, url_for

from meteorpi_model import ExportConfiguration, ValidationError

from ..exporter import configs, report, tasks
from ..storage import store
from ..storage.node_activity import iso
from .context import services
from .errors import ApiError
from .security import requires_role
from .uploads import read_json

blueprint = Blueprint("exports", __name__)

ROLE = "camera_admin"


def _database():
    return services().database


def _document() -> dict:
    document = read_json(request, services().config.max_json_bytes)
    if not isinstance(document, dict):
        raise ApiError(400, "the request body must be a JSON object", "bad_request")
    return document


def _invalid(error: ValidationError) -> ApiError:
    return ApiError(400, str(error), "invalid_configuration", field=error.path)


def _not_found(error: configs.ConfigNotFound) -> ApiError:
    return ApiError(404, str(error), "not_found")


@blueprint.get("/exports")
@requires_role(ROLE)
def list_exports():
    with _database().read() as session:
        statuses = report.gather(session)
    return jsonify({"exports": [status.to_dict() for status in statuses]})


@blueprint.post("/exports")
@requires_role(ROLE)
def add_export():
    document = _document()
    document.setdefault("config_id", uuid.uuid4().hex)
    try:
        configuration = ExportConfiguration.from_dict(document)
        configs.check_name(configuration.name)
        with _database().write() as session:
            configs.add(session, configuration)
            status = report.gather(session, configuration.name)[0]
    except ValidationError as error:
        raise _invalid(error) from None
    except configs.ConfigExists as error:
        raise ApiError(409, str(error), "conflict") from None
    response = jsonify(status.to_dict())
    response.status_code = 201
    response.headers["Location"] = url_for("exports.show_export", name=configuration.name)
    return response


@blueprint.get("/exports/status")
@requires_role(ROLE)
def export_status():
    now = store.now_ms()
    with _database().read() as session:
        statuses = report.replication_status(session, now)
    return jsonify({"exports": statuses, "now": iso(now), "now_ms": now})


@blueprint.get("/exports/<name>")
@requires_role(ROLE)
def show_export(name: str):
    try:
        with _database().read() as session:
            status = report.gather(session, name)[0]
            errors = tasks.last_task_errors(session, status.view.config_id)
    except configs.ConfigNotFound as error:
        raise _not_found(error) from None
    body = status.to_dict()
    body["recent_task_errors"] = [{"entity_id": entity_id.hex, "state": state, "error": error}
                                  for entity_id, state, error in errors]
    return jsonify(body)


@blueprint.patch("/exports/<name>")
@requires_role(ROLE)
def change_export(name: str):
    changes = _document()
    try:
        with _database().write() as session:
            configs.update(session, name, changes)
            status = report.gather(session, name)[0]
    except ValidationError as error:
        raise _invalid(error) from None
    except configs.ConfigNotFound as error:
        raise _not_found(error) from None
    return jsonify(status.to_dict())


@blueprint.delete("/exports/<name>")
@requires_role(ROLE)
def remove_export(name: str):
    try:
        with _database().write() as session:
            configs.remove(session, name)
    except configs.ConfigNotFound as error:
        raise _not_found(error) from None
    return "", 204


@blueprint.post("/exports/<name>/retry")
@requires_role(ROLE)
def retry_export(name: str):
    try:
        with _database().write() as session:
            row = configs.get_row(session, name, for_update=True)
            count = tasks.retry_failed(session, row.config_id)
            row.next_attempt_at = 0
    except configs.ConfigNotFound as error:
        raise _not_found(error) from None
    return jsonify({"requeued": count})
