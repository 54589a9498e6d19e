"""/health: is this server up, and can it do its work? No credentials, no caching.

``GET /health``         liveness: answers 200 ``{"status": "ok"}`` whenever the process can
                        serve a request; it touches neither the database nor the disk, so
                        a supervisor restarts the process only when the process is at fault
``GET /health/ready``   readiness: 200, or 503 when a check fails, with every check and
                        its reason (see :mod:`meteorpi_server.observe.health`); for a load
                        balancer or a monitor
"""
from __future__ import annotations

from flask import Blueprint, jsonify

from ..observe.health import readiness
from .context import services

blueprint = Blueprint("health", __name__)


def _uncached(response):
    response.headers["Cache-Control"] = "no-store"
    return response


@blueprint.get("/health")
def live():
    return _uncached(jsonify({"status": "ok"}))


@blueprint.get("/health/ready")
def ready():
    result = readiness(services())
    response = jsonify(result.to_dict())
    response.status_code = 200 if result.ok else 503
    return _uncached(response)
