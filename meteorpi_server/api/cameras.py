"""GET /cameras and one camera's statuses and metadata."""
from __future__ import annotations

from flask import Blueprint, jsonify, request

from meteorpi_model import ValidationError
from meteorpi_model.limits import MAX_TIME_MS
from meteorpi_model.search import check_camera_id

from ..reading import cameras
from ..storage.store import now_ms
from .context import services
from .errors import ApiError
from .params import QueryParameters
from .security import requires_read_access, requires_role
from .uploads import read_json

blueprint = Blueprint("cameras", __name__)


def _checked(camera_id: str) -> str:
    """The camera id from the URL, if it is one a camera could have (the rule searches
    use); a NUL, say, is a 400 here rather than an error from the database."""
    try:
        return check_camera_id(camera_id)
    except ValidationError as error:
        raise ApiError(400, f"the camera id in the URL {error.message}", "bad_url",
                       field="camera_id") from None


def _unknown_camera(camera_id: str) -> ApiError:
    return ApiError(404, f"no record from camera '{camera_id}' has arrived here", "not_found")


@blueprint.get("/cameras")
@requires_read_access()
def list_cameras():
    """``{"cameras": [...]}``, every camera heard from, or with ``connected=1`` only
    those heard from within ``camera_connected_seconds``."""
    params = QueryParameters(request.args, ("connected",))
    connected_only = params.flag("connected")
    app_services = services()
    with app_services.database.read() as session:
        found = cameras.list_cameras(session, now_ms(), app_services.config.camera_connected_seconds,
                                     connected_only)
    return jsonify({"cameras": [camera.to_dict() for camera in found]})


def _camera_reply(camera_id: str):
    app_services = services()
    with app_services.database.read() as session:
        camera = cameras.get_camera(session, camera_id, now_ms(),
                                    app_services.config.camera_connected_seconds)
    if camera is None:
        raise _unknown_camera(camera_id)
    return jsonify({"camera": camera.to_dict()})


@blueprint.get("/cameras/<camera_id>")
@requires_read_access()
def get_camera(camera_id: str):
    """``{"camera": {...}}`` with the camera's status history under ``statuses``."""
    return _camera_reply(_checked(camera_id))


@blueprint.put("/cameras/<camera_id>/meta")
@requires_role("camera_admin")
def set_camera_meta(camera_id: str):
    """Replace the camera's free-form JSON metadata; answers as GET /cameras/<camera_id>."""
    camera_id = _checked(camera_id)
    meta = read_json(request, services().config.max_json_bytes)
    try:
        with services().database.write() as session:
            found = cameras.set_meta(session, camera_id, meta)
    except cameras.CameraMetaError as error:
        raise ApiError(400, str(error), "bad_meta", field="meta") from None
    if not found:
        raise _unknown_camera(camera_id)
    return _camera_reply(camera_id)


def _status_reply(camera_id: str, time_ms: int, when: str):
    with services().database.read() as session:
        status = cameras.status_at(session, camera_id, time_ms)
    if status is None:
        raise ApiError(404, f"camera '{camera_id}' has no status in force {when}", "not_found")
    return jsonify({"status": status.to_dict()})


@blueprint.get("/cameras/<camera_id>/status")
@requires_read_access()
def current_status(camera_id: str):
    """The original API: ``{"status": {...}}``, the status in force now."""
    return _status_reply(_checked(camera_id), now_ms(), "now")


@blueprint.get("/cameras/<camera_id>/status/<time_ms>")
@requires_read_access()
def status_at_time(camera_id: str, time_ms: str):
    """The original API: ``{"status": {...}}``, the status in force at ``time_ms``."""
    camera_id = _checked(camera_id)
    if not (time_ms.isascii() and time_ms.isdigit() and len(time_ms) <= 16
            and int(time_ms) <= MAX_TIME_MS):
        raise ApiError(400, f"the time in the URL must be milliseconds since 1970, "
                            f"0 to {MAX_TIME_MS}", "bad_url", field="time_ms")
    return _status_reply(camera_id, int(time_ms), f"at {time_ms}")
