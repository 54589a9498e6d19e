"""GET /metrics: the Prometheus text format, for whom the ``metrics_access`` setting names."""
from __future__ import annotations

from flask import Blueprint, Response

from ..observe import metrics
from .context import services
from .security import requires_access

blueprint = Blueprint("metrics", __name__)


@blueprint.get("/metrics")
@requires_access("metrics_access")
def scrape():
    body, content_type = metrics.scrape(services().database)
    return Response(body, content_type=content_type, headers={"Cache-Control": "no-store"})
