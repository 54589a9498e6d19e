"""Protocol v2 targets that refuse entities or answer out of shape: one refused entity is
that entity's trouble, a malformed reply is the target's, and neither is a crash here."""
from __future__ import annotations

import datetime
import io
import json
import uuid

import pytest
from export_nodes import (  # noqa: F401
    add_export,
    extra_postgres_databases,
    make_node,
    node_database,
    record_ids,
    status_of,
)
from sqlalchemy import select
from werkzeug.wrappers import Request, Response

from meteorpi_server.exporter import configs, tasks
from meteorpi_server.exporter.tasks import Backoff
from meteorpi_server.node.demo import DemoPlan, generate
from meteorpi_server.storage.orm import EventRow, ExportTaskRow

SMALL_NIGHT = DemoPlan(cameras=2, nights=1, events_per_night=3, files_per_event=2,
                       standalone_files=0, file_size=500, first_night=datetime.date(2026, 11, 1))
REFUSED_CAMERA = "demo-cam-1"
TARGET_MESSAGE = "event_type: must name a known namespace"


def events_of(node, camera_id: str) -> set[str]:
    with node.services.database.read() as session:
        return {event_id.hex for event_id in session.scalars(
            select(EventRow.event_id).where(EventRow.camera_id == camera_id))}


@pytest.fixture
def source(make_node):
    node = make_node("source")
    generate(node.recorder, SMALL_NIGHT)
    return node


def _forward(app, environ, document) -> dict:
    body = json.dumps(document).encode()
    environ["wsgi.input"] = io.BytesIO(body)
    environ["CONTENT_LENGTH"] = str(len(body))
    return json.loads(Response.from_app(app, environ).get_data())


def invalid_in_v2(operation: str, refused_ids: set[str]):
    """A v2 target that answers ``invalid`` for these entities in its ``operation`` reply
    (``plan`` or ``records``) and never stores them; the others go to the real server."""

    def entry_id(entry: dict) -> str:
        if operation == "plan":
            return entry["id"]
        return entry[entry["type"]][f"{entry['type']}_id"]

    def wrap(app):
        def wsgi(environ, start_response):
            request = Request(environ)
            if request.method != "POST" or request.path != f"/import/batch/{operation}":
                return app(environ, start_response)
            entries = request.get_json()["entities"]
            kept = [entry for entry in entries if entry_id(entry) not in refused_ids]
            key = "entities" if operation == "plan" else "results"
            reply = (_forward(app, environ, {"entities": kept}) if kept
                     else {key: [], "need_statuses": [], "need_files": []})
            forwarded = iter(reply[key])
            reply[key] = [{"type": entry["type"], "id": entry_id(entry), "state": "invalid",
                           "message": TARGET_MESSAGE, "field": "event.event_type"}
                          if entry_id(entry) in refused_ids else next(forwarded)
                          for entry in entries]
            return Response(json.dumps(reply), 200, content_type="application/json")(
                environ, start_response)
        return wsgi
    return wrap


@pytest.mark.parametrize("operation", ["plan", "records"])
def test_an_entity_a_v2_target_calls_invalid_is_refused_not_the_target(source, make_node, operation):
    refused = events_of(source, REFUSED_CAMERA)
    target = make_node("central", 0).serve(invalid_in_v2(operation, refused))
    add_export(source, target.import_url)
    exporter = source.exporter(max_failures=2, backoff=Backoff(0, 0))
    first = exporter.run_once().targets["central"]
    # The other camera's events went; the target was not blamed for the refused ones.
    assert (first.entities_sent, first.target_failures) == (3, 0)
    assert first.refused >= 3
    for _ in range(3):  # more runs than it takes to disable a failing target
        exporter.run_once()
    status = status_of(source)
    assert status.view.state() == "enabled" and status.view.consecutive_failures == 0
    # Each refused event was tried export_max_failures times, then given up on, with the
    # target's own words.
    assert (status.done, status.pending, status.failed) == (3, 0, 3)
    with source.services.database.read() as session:
        errors = tasks.last_task_errors(session, status.view.config_id)
        attempts = session.scalars(select(ExportTaskRow.attempts)
                                   .where(ExportTaskRow.state == tasks.FAILED)).all()
    assert attempts == [2, 2, 2]
    assert {entity_id.hex for entity_id, _, _ in errors} == refused
    for _, _, error in errors:
        assert f"the target refused it as invalid: {TARGET_MESSAGE} (field event.event_type)" in error
        assert "HTTP" not in error
    assert record_ids(target)["events"].isdisjoint(uuid.UUID(hex=entity_id) for entity_id in refused)


def _bad_first_id(reply):
    reply["entities"][0]["id"] = "not-an-id"
    return reply


def _no_need_files(reply):
    del reply["need_files"]
    return reply


def _entities_not_a_list(reply):
    reply["entities"] = "all of them"
    return reply


def _offset_a_string(reply):
    for item in reply["need_files"]:
        item["offset"] = "0"
    return reply


def _unknown_state(reply):
    reply["results"][0]["state"] = "done"
    return reply


def _results_missing(reply):
    return {"outcome": reply["results"]}


@pytest.mark.parametrize("operation, change, detail", [
    ("plan", _bad_first_id, "not an id of 32 hex digits"),
    ("plan", _no_need_files, "no list 'need_files'"),
    ("plan", _entities_not_a_list, "no list 'entities'"),
    ("plan", _offset_a_string, "not a whole number of bytes"),
    ("plan", lambda reply: [reply], "not an object"),
    ("records", _unknown_state, "state 'done'"),
    ("records", _results_missing, "no list 'results'"),
], ids=["bad-id", "missing-key", "wrong-type", "offset-type", "not-an-object", "unknown-state",
        "no-results"])
def test_a_v2_reply_out_of_shape_is_a_target_failure_not_a_crash(source, make_node, operation,
                                                                  change, detail):
    broken = {"on": True}

    def wrap(app):
        def wsgi(environ, start_response):
            request = Request(environ)
            if (not broken["on"] or request.method != "POST"
                    or request.path != f"/import/batch/{operation}"):
                return app(environ, start_response)
            reply = change(json.loads(Response.from_app(app, environ).get_data()))
            return Response(json.dumps(reply), 200, content_type="application/json")(
                environ, start_response)
        return wsgi

    target = make_node("central", 0).serve(wrap)
    add_export(source, target.import_url)
    summary = source.exporter(backoff=Backoff(60_000, 60_000)).run_once().targets["central"]
    assert summary.target_failures == 1
    status = status_of(source)
    assert "target answered outside the protocol" in status.view.last_error
    assert detail in status.view.last_error
    assert "unexpected error on this node" not in status.view.last_error
    assert status.view.state() == "backing off"
    assert (status.done, status.failed) == (0, 0), "nothing is done the exporter could not read"
    # Once the target speaks the protocol again, everything goes.
    broken["on"] = False
    with source.services.database.write() as session:
        configs.get_row(session, "central").next_attempt_at = 0
    source.exporter().run_once()
    status = status_of(source)
    assert (status.pending, status.done, status.failed) == (0, 6, 0)
    assert record_ids(target)["events"] == record_ids(source)["events"]
