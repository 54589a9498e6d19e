"""GET /events and GET /files: searches, as the original JSON-in-the-path form and as a
query string with cursors."""
from __future__ import annotations

import json
import re
from typing import Any, Callable
from urllib.parse import unquote

from flask import Blueprint, jsonify, request

from meteorpi_model import EventSearch, FileSearch, ValidationError

from ..reading import searches
from .context import services
from .errors import ApiError
from .params import QueryParameters, bad_parameter
from .security import requires_read_access

blueprint = Blueprint("search", __name__)

_SHARED_PARAMETERS = ("camera_id", "after", "before", "after_offset", "before_offset",
                      "lat_min", "lat_max", "long_min", "long_max", "meta", "limit",
                      "cursor", "order")
EVENT_PARAMETERS = _SHARED_PARAMETERS + ("event_type",)
FILE_PARAMETERS = _SHARED_PARAMETERS + ("mime_type", "semantic_type", "exclude_events")
ORDERS = ("newest", "oldest")

# The query string's names for the search fields whose names differ.
_PARAMETER_OF_FIELD = (
    (re.compile(r"^camera_ids(\[\d+\])?"), "camera_id"),
    (re.compile(r"^meta_constraints"), "meta"),
)


def _database():
    return services().database


# The original form: /events/<search as JSON> ------------------------------------------

def _legacy_search(text: str, parse: Callable[[Any], Any]):
    """Parse the JSON search in the path; some old clients encoded it twice."""
    for candidate in (text, unquote(text)):
        try:
            document = json.loads(candidate)
        except (ValueError, RecursionError):
            continue
        return parse(document)
    raise ApiError(400, "the search in the URL is not valid JSON; send it as "
                        '/events/{"camera_ids": ["cam-1"], "limit": 10} (URL-encoded)',
                   "bad_search", field="search")


@blueprint.get("/events/<path:search_json>")
@requires_read_access()
def legacy_search_events(search_json: str):
    """The original API: ``{"events": [...], "count": N}``, newest first."""
    search = _legacy_search(search_json, EventSearch.from_dict)
    with _database().read() as session:
        page = searches.search_events(session, search, with_count=True)
    return jsonify({"events": [event.to_dict() for event in page.items], "count": page.count})


@blueprint.get("/files/<path:search_json>")
@requires_read_access()
def legacy_search_files(search_json: str):
    """The original API: ``{"files": [...], "count": N}``, newest first."""
    search = _legacy_search(search_json, FileSearch.from_dict)
    with _database().read() as session:
        page = searches.search_files(session, search, with_count=True)
    return jsonify({"files": [record.to_dict() for record in page.items], "count": page.count})


# The query-string form: /events?camera_id=...&after=... ---------------------------------

def _meta_constraints(params: QueryParameters) -> list:
    constraints = []
    for text in params.texts("meta"):
        try:
            constraints.append(json.loads(text))
        except (ValueError, RecursionError):
            raise bad_parameter("meta", 'must be a JSON meta constraint such as '
                                '{"type": "string_equals", "key": "meteorpi:class", '
                                '"value": "sporadic"}') from None
    return constraints


def _search_document(params: QueryParameters, specific: dict) -> dict:
    document: dict[str, Any] = {
        "after": params.integer("after"), "before": params.integer("before"),
        "limit": params.integer("limit"),
        "meta_constraints": _meta_constraints(params) or None,
        **{name: params.number(name) for name in
           ("after_offset", "before_offset", "lat_min", "lat_max", "long_min", "long_max")},
        **specific,
    }
    camera_ids = params.texts("camera_id")
    if camera_ids:
        document["camera_ids"] = camera_ids
    return document


def _parse_search(parse: Callable[[Any], Any], document: dict):
    """The search, or a 400 naming the query parameter (not the search field) at fault."""
    try:
        return parse(document)
    except ValidationError as error:
        path = error.path
        for pattern, parameter in _PARAMETER_OF_FIELD:
            path = pattern.sub(parameter, path, count=1)
        parameter = re.split(r"[.\[]", path, maxsplit=1)[0]
        if path == parameter:
            raise bad_parameter(parameter, error.message) from None
        raise bad_parameter(parameter, f"is invalid at {path}: {error.message}") from None


def _cursor(params: QueryParameters) -> tuple[searches.Cursor | None, bool]:
    order = params.text("order")
    if order is not None and order not in ORDERS:
        raise bad_parameter("order", f"must be one of {', '.join(ORDERS)}")
    text = params.text("cursor")
    cursor = None
    if text is not None:
        try:
            cursor = searches.Cursor.decode(text)
        except searches.CursorError as error:
            raise bad_parameter("cursor", str(error)) from None
        if order is not None and cursor.descending != (order == "newest"):
            raise bad_parameter("cursor", "was made for the other order; keep the order "
                                          "the first page used")
    descending = cursor.descending if cursor is not None else order != "oldest"
    return cursor, descending


def _page_reply(key: str, page: searches.Page, cursor: searches.Cursor | None) -> dict:
    reply: dict[str, Any] = {key: [item.to_dict() for item in page.items], "more": page.more}
    # An empty page keeps the cursor it was asked with, so a reader can ask again later.
    position = page.next or cursor
    if position is not None:
        reply["next"] = position.encode()
    return reply


@blueprint.get("/events")
@requires_read_access()
def query_events():
    """``{"events": [...], "more": bool, "next": cursor}``; pass ``cursor=next`` for the
    following page."""
    params = QueryParameters(request.args, EVENT_PARAMETERS)
    search = _parse_search(EventSearch.from_dict,
                           _search_document(params, {"event_type": params.text("event_type")}))
    cursor, descending = _cursor(params)
    with _database().read() as session:
        page = searches.search_events(session, search, cursor, descending)
    return jsonify(_page_reply("events", page, cursor))


@blueprint.get("/files")
@requires_read_access()
def query_files():
    """``{"files": [...], "more": bool, "next": cursor}``, as GET /events."""
    params = QueryParameters(request.args, FILE_PARAMETERS)
    specific = {"mime_type": params.text("mime_type"),
                "semantic_type": params.text("semantic_type"),
                "exclude_events": params.flag("exclude_events")}
    search = _parse_search(FileSearch.from_dict, _search_document(params, specific))
    cursor, descending = _cursor(params)
    with _database().read() as session:
        page = searches.search_files(session, search, cursor, descending)
    return jsonify(_page_reply("files", page, cursor))
