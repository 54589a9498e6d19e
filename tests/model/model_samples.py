"""Wire dicts written by hand in docs/protocol.rst's shape, shared by the model tests.

Each function returns a fresh dict, so a test may change it freely.
"""

from __future__ import annotations

EVENT_ID = "9b2e6a3c4d5e4f708192a3b4c5d6e7f8"
FILE_ID_1 = "0a1b2c3d4e5f40718293a4b5c6d7e8f9"
FILE_ID_2 = "1f2e3d4c5b6a47988796a5b4c3d2e1f0"
STATUS_ID = "c0ffee00c0ffee00c0ffee00c0ffee00"
MD5 = "d41d8cd98f00b204e9800998ecf8427e"


def file_dict() -> dict:
    return {
        "file_id": FILE_ID_1,
        "camera_id": "obs-cambridge-1",
        "mime_type": "image/png",
        "file_name": "meteor.png",
        "semantic_type": "meteorpi:triggers/event/maxBrightness/lensCorr",
        "file_time": 1433001600123,
        "file_size": 48213,
        "status_id": STATUS_ID,
        "md5": MD5,
        "meta": [
            {"type": "string", "key": "meteorpi:comment", "value": "bright, \u00e9t\u00e9 \u2604"},
            {"type": "number", "key": "meteorpi:peak", "value": 231.5},
            {"type": "number", "key": "meteorpi:frames", "value": 12},
            {"type": "date", "key": "obs:seen", "value": 1433001600000},
        ],
    }


def event_dict() -> dict:
    second_file = file_dict() | {"file_id": FILE_ID_2, "mime_type": "video/mp4", "meta": []}
    del second_file["file_name"], second_file["md5"]
    return {
        "event_id": EVENT_ID,
        "camera_id": "obs-cambridge-1",
        "event_time": 1433001600000,
        "event_type": "meteorpi:movingObject",
        "status_id": STATUS_ID,
        "files": [file_dict(), second_file],
        "meta": [{"type": "number", "key": "meteorpi:duration", "value": 0.84}],
    }


def status_dict() -> dict:
    return {
        "camera_id": "obs-cambridge-1",
        "status_id": STATUS_ID,
        "lens": "Computar 4mm f/1.2",
        "sensor": "Watec 902H2 Ultimate",
        "inst_url": "https://www.ast.cam.ac.uk/",
        "inst_name": "Institute of Astronomy",
        "valid_from": 1420070400000,
        "valid_to": 1451606400000,
        "software_version": 2,
        "location": {"lat": 52.2135, "long": 0.0964, "gps": True, "error": 0.001},
        "orientation": {"alt": 45.0, "az": 180, "error": 0.5, "rot": -2.25, "width": 60.0},
        "regions": [[{"x": 0, "y": 0}, {"x": 720.0, "y": 0}, {"x": 720, "y": 480.5}], []],
    }


def event_search_dict() -> dict:
    return {
        "camera_ids": ["obs-cambridge-1", "obs-leeds-2"],
        "lat_min": 50.0,
        "lat_max": 55.0,
        "long_min": -2,
        "long_max": 1.5,
        "after": 1420070400000,
        "before": 1451606400000,
        "after_offset": 50400,
        "before_offset": 57600,
        "event_type": "meteorpi:movingObject",
        "meta_constraints": [
            {"type": "string_equals", "key": "meteorpi:comment", "value": "bright"},
            {"type": "less", "key": "meteorpi:peak", "value": 240.5},
            {"type": "after", "key": "obs:seen", "value": 1433001600000},
        ],
        "limit": 20,
        "skip": 40,
    }


def file_search_dict() -> dict:
    search = event_search_dict()
    del search["event_type"]
    return search | {"mime_type": "image/png", "semantic_type": "meteorpi:bezierFit", "exclude_events": True}


def export_dict() -> dict:
    return {
        "config_id": EVENT_ID,
        "type": "event",
        "name": "to the archive",
        "description": "all meteors",
        "target_url": "https://archive.example.org:8443/api/import",
        "user_id": "cambridge",
        "password": "s3cret",
        "enabled": True,
        "search": event_search_dict(),
    }
