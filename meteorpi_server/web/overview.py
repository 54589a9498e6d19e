"""What the status page shows, gathered in one place (no Flask here).

:func:`gather` reads the server's health, its cameras, the newest events, the nodes that
import here and the export targets, and returns them as one JSON-ready dict: the page is
rendered from it, and its script re-renders from the same dict fetched again after each
change in the feed.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Callable

from meteorpi_model import Event, EventSearch

from ..exporter import report
from ..observe.health import readiness
from ..reading import cameras, searches
from ..storage import feed, node_activity
from ..storage.store import now_ms

if TYPE_CHECKING:
    from ..services import Services

#: How many of the newest events the page shows.
NEWEST_EVENTS = 12


def gather(services: Services, thumbnail_url: Callable[[str], str],
           now: int | None = None) -> dict:
    """The page's data; ``thumbnail_url(file_id_hex)`` gives a thumbnail's address."""
    now = now_ms() if now is None else now
    with services.database.read() as session:
        # First, so that a change stored while the rest is read is announced again
        # by the stream rather than missed.
        sequence = feed.newest_sequence(session)
        found = cameras.list_cameras(session, now, services.config.camera_connected_seconds)
        events = searches.search_events(session, EventSearch(limit=NEWEST_EVENTS)).items
        nodes = [node.to_dict() for node in node_activity.list_nodes(session, now)]
        exports = report.replication_status(session, now)
    return {
        "generated_at": now,
        "sequence": sequence,
        "server_id": services.server_id.hex,
        "health": readiness(services).to_dict(),
        "connected_seconds": services.config.camera_connected_seconds,
        "cameras": [_camera(camera) for camera in found],
        "events": [_event(event, thumbnail_url) for event in events],
        "nodes": nodes,
        "exports": exports,
    }


def _camera(camera: cameras.Camera) -> dict:
    data = camera.to_dict()
    status = camera.status
    data["status_summary"] = None if status is None else {
        "since": status.valid_from,
        "institution": status.inst_name or None,
        "lens": status.lens or None,
        "sensor": status.sensor or None,
        "latitude": status.location.lat if status.location else None,
        "longitude": status.location.long if status.location else None,
    }
    data.pop("meta", None)  # camera admins' free-form notes; not for a wall screen
    data.pop("status", None)
    return data


def _event(event: Event, thumbnail_url: Callable[[str], str]) -> dict:
    image = next((record for record in event.files
                  if record.mime_type.lower().startswith("image/")), None)
    return {
        "event_id": event.event_id.hex,
        "camera_id": event.camera_id,
        "time": event.event_time,
        "type": str(event.event_type),
        "file_count": len(event.files),
        "thumbnail": thumbnail_url(image.file_id.hex) if image is not None else None,
        "thumbnail_name": (image.file_name or image.file_id.hex) if image is not None else None,
    }
