"""Targets that fail: the exporter backs off, records why, disables when told to, and its
task state stays true whatever the target does."""
from __future__ import annotations

import datetime
import json
import random
import socket
import threading
import uuid

import pytest
from conftest import PASSWORD
from export_nodes import (  # noqa: F401
    ImportLog,
    add_export,
    extra_postgres_databases,
    faulty_target,
    make_node,
    node_database,
    record_ids,
    status_of,
    wait_until,
)
from sqlalchemy import select
from werkzeug.wrappers import Request, Response

from meteorpi_server.exporter import configs, tasks
from meteorpi_server.exporter.tasks import Backoff
from meteorpi_server.node.demo import DemoPlan, generate
from meteorpi_server.storage import store
from meteorpi_server.storage.orm import ExportTaskRow

SMALL_NIGHT = DemoPlan(cameras=2, nights=1, events_per_night=3, files_per_event=2,
                       standalone_files=0, file_size=500, first_night=datetime.date(2026, 11, 1))


@pytest.fixture
def source(make_node):
    node = make_node("source")
    generate(node.recorder, SMALL_NIGHT)
    return node


@pytest.mark.parametrize("mode, reason", [
    ("garbage", "unexpected reply"),
    ("error", "500"),  # an upload's retries give up with "500 asking for the offset"
    ("slow", "timed out: no answer within the read timeout"),
    ("close", "closed the connection without answering"),
])
def test_a_failing_target_defers_its_configuration_and_says_why(source, faulty_target, mode, reason):
    target = faulty_target(mode)
    add_export(source, target.import_url)
    summary = source.exporter(read_timeout=0.5, backoff=Backoff(60_000, 600_000)).run_once()
    assert summary.targets["central"].target_failures == 1
    status = status_of(source)
    assert reason in status.view.last_error
    assert status.view.state() == "backing off"
    assert status.view.consecutive_failures == 1
    # No task was charged: the entities are as ready to go as before.
    assert (status.done, status.failed) == (0, 0)
    with source.services.database.read() as session:
        assert all(task.attempts == 0 for task in tasks.due_tasks(session, status.view.config_id, 100))
    # Backing off: another run leaves the target alone.
    requests_so_far = target.requests
    assert source.exporter().run_once().targets["central"].skipped == "backing off"
    assert target.requests == requests_so_far


@pytest.mark.parametrize("mode", ["error", "close", "garbage"])
def test_a_target_that_keeps_failing_in_ways_that_heal_is_never_disabled(source, faulty_target, mode):
    target = faulty_target(mode)
    add_export(source, target.import_url)
    exporter = source.exporter(max_failures=3, backoff=Backoff(1, 1))
    for _ in range(6):
        with source.services.database.write() as session:
            configs.get_row(session, "central").next_attempt_at = 0
        assert not exporter.run_once().targets["central"].disabled
    status = status_of(source)
    assert status.view.configuration.enabled
    assert status.view.consecutive_failures == 6
    assert status.view.disabled_reason is None


def test_wrong_credentials_disable_the_configuration_with_the_reason_in_export_status(
        source, make_node):
    from meteorpi_server.exporter import report

    target = make_node("central", 0).serve()
    add_export(source, target.import_url)
    with source.services.database.write() as session:
        configs.update(session, "central", {"password": "not the password"})
    exporter = source.exporter(max_failures=3, backoff=Backoff(1, 1))
    for _ in range(3):
        with source.services.database.write() as session:
            configs.get_row(session, "central").next_attempt_at = 0
        exporter.run_once()
    status = status_of(source)
    assert status.view.state() == "disabled"
    assert "after 3 failures in a row" in status.view.disabled_reason
    assert "answered 401" in status.view.disabled_reason
    with source.services.database.read() as session:
        shown = report.format_status(report.gather(session))
    assert "answered 401" in shown and "check the configuration's user and password" in shown
    assert PASSWORD not in shown
    assert source.exporter().run_once().targets == {}


def test_a_target_down_for_longer_than_four_back_offs_is_caught_up_with_once_it_returns(
        source, make_node):
    target = make_node("central", 0).serve()
    target.stop_serving()  # down from the start, on a port it will come back on
    add_export(source, target.import_url)
    exporter = source.exporter(max_failures=4, backoff=Backoff(20, 100))
    stop = threading.Event()
    runner = threading.Thread(target=exporter.run_forever, args=(stop,), daemon=True)
    runner.start()
    try:
        wait_until(lambda: status_of(source).view.consecutive_failures >= 8, 60,
                   "eight failures in a row (twice export_max_failures)")
        assert status_of(source).view.configuration.enabled, "an outage must not disable it"
        target.serve()
        events = len(record_ids(source)["events"])
        wait_until(lambda: status_of(source).done == events, 60, "the node to catch up")
    finally:
        stop.set()
        runner.join(30)
    status = status_of(source)
    assert (status.pending, status.failed) == (0, 0)
    assert status.view.consecutive_failures == 0
    assert_same_records_for_events(source, target)


def test_a_success_resets_the_failure_count(source, make_node):
    target = make_node("central", 0).serve()
    add_export(source, target.import_url)
    with source.services.database.write() as session:
        row = configs.get_row(session, "central")
        row.consecutive_failures, row.last_error = 3, "earlier trouble"
    source.exporter().run_once()
    status = status_of(source)
    assert status.view.consecutive_failures == 0
    assert status.view.last_success_at is not None
    assert status.view.state() == "enabled"


@pytest.mark.slow
def test_a_flaky_target_gets_everything_exactly_once_in_the_end(source, make_node):
    # One request in four, at random (but the same every run), fails: a 503, garbage, or a
    # connection closed without a reply.
    target = make_node("central", 0)
    faults = random.Random(20261122)
    lock = threading.Lock()

    def flaky(app):
        def wsgi(environ, start_response):
            with lock:
                fault = faults.randrange(12)
            if fault == 0:
                return Response("overloaded", 503)(environ, start_response)
            if fault == 1:
                return Response("<html>proxy error</html>", 200)(environ, start_response)
            if fault == 2:
                environ["werkzeug.socket"].shutdown(socket.SHUT_RDWR)
                start_response("200 OK", [])
                return [b""]
            return app(environ, start_response)
        return wsgi

    target.serve(flaky)
    add_export(source, target.import_url)
    exporter = source.exporter(max_failures=0, backoff=Backoff(1, 1))
    for _ in range(300):
        exporter.run_once()
        if status_of(source).pending == 0:
            break
    status = status_of(source)
    assert (status.pending, status.failed) == (0, 0)
    assert status.done == len(record_ids(source)["events"])
    assert record_ids(target)["events"] == record_ids(source)["events"]
    assert_same_records_for_events(source, target)


def assert_same_records_for_events(source, target) -> None:
    with source.services.database.read() as mine, target.services.database.read() as theirs:
        for event_id in record_ids(source)["events"]:
            event = store.get_event(mine, event_id)
            assert store.get_event(theirs, event_id) == event
            for record in event.files:
                assert (target.services.files.path_for(record.file_id).read_bytes()
                        == source.services.files.path_for(record.file_id).read_bytes())


def assert_given_up(source, status, count: int, attempts: int, reason: str) -> None:
    """``count`` tasks were given up on after ``attempts`` tries each, each saying ``reason``."""
    with source.services.database.read() as session:
        errors = tasks.last_task_errors(session, status.view.config_id)
        tries = session.scalars(select(ExportTaskRow.attempts)
                                .where(ExportTaskRow.state == tasks.FAILED)).all()
    assert tries == [attempts] * count
    assert errors and all(reason in error for _, _, error in errors)


def refusing(*camera_ids: str):
    """A target that answers 'failed' for every event of these cameras."""

    def wrap(app):
        def wsgi(environ, start_response):
            request = Request(environ)
            if request.method == "POST" and request.path == "/import":
                document = request.get_json(silent=True, cache=True) or {}
                event = document.get("event") or {}
                if event.get("camera_id") in camera_ids:
                    reply = Response('{"state": "failed", "message": "camera under repair"}',
                                     200, content_type="application/json")
                    return reply(environ, start_response)
                environ["wsgi.input"] = _Body(request.get_data())
            return app(environ, start_response)
        return wsgi
    return wrap


class _Body:
    def __init__(self, data: bytes):
        import io

        self.stream = io.BytesIO(data)

    def read(self, *args):
        return self.stream.read(*args)


def test_an_entity_the_target_refuses_waits_without_holding_up_the_others(source, make_node):
    target = make_node("central", 0, batch_protocol=False).serve(refusing("demo-cam-1"))
    add_export(source, target.import_url)
    exporter = source.exporter(max_failures=2, backoff=Backoff(0, 0))
    first = exporter.run_once()
    assert first.targets["central"].entities_sent == SMALL_NIGHT.events_per_night
    assert first.targets["central"].target_failures == 0
    for _ in range(10):
        if status_of(source).pending == 0:
            break
        exporter.run_once()
    status = status_of(source)
    assert status.view.consecutive_failures == 0, "a refused entity says nothing about the target"
    # Each refused entity was tried twice (max_failures=2), then given up on.
    refused = SMALL_NIGHT.events_per_night
    assert (status.done, status.pending, status.failed) == (SMALL_NIGHT.events_per_night, 0, refused)
    assert_given_up(source, status, count=refused, attempts=2, reason="camera under repair")


def test_retry_puts_failed_tasks_back(source, make_node):
    target = make_node("central", 0, batch_protocol=False).serve(refusing("demo-cam-1"))
    add_export(source, target.import_url)
    source.exporter(max_failures=1).run_once()
    assert status_of(source).failed == SMALL_NIGHT.events_per_night
    target.stop_serving()
    target.serve()
    with source.services.database.write() as session:
        assert tasks.retry_failed(session, status_of(source).view.config_id) == SMALL_NIGHT.events_per_night
    source.exporter().run_once()
    status = status_of(source)
    assert (status.pending, status.failed) == (0, 0)
    assert_same_records_for_events(source, target)


def test_wrong_credentials_are_a_target_failure_with_advice(source, make_node):
    target = make_node("central", 0).serve()
    add_export(source, target.import_url)
    with source.services.database.write() as session:
        configs.update(session, "central", {"password": "not the password"})
    summary = source.exporter().run_once()
    assert summary.targets["central"].target_failures == 1
    assert "check the configuration's user and password" in status_of(source).view.last_error
    assert PASSWORD not in status_of(source).view.last_error


def test_a_wrong_url_is_a_target_failure_not_a_refusal_of_each_entity(source, make_node):
    target = make_node("central", 0).serve()
    add_export(source, target.url + "/not-import")
    source.exporter().run_once()
    status = status_of(source)
    assert status.view.consecutive_failures == 1
    assert "ending in /import" in status.view.last_error
    assert status.failed == 0


def test_an_entity_deleted_locally_fails_its_task_only(source, make_node):
    target = make_node("central", 0).serve()
    add_export(source, target.import_url)
    with source.services.database.write() as session:
        # A task for an event this node does not have (say, removed by hand).
        session.add(ExportTaskRow(
            config_id=configs.get_row(session, "central").config_id, entity_id=uuid.uuid4(),
            entity_type="event", entity_time=0, state="pending", attempts=0, created_at=0,
            next_attempt_at=0))
    summary = source.exporter().run_once()
    assert summary.targets["central"].entities_sent == SMALL_NIGHT.cameras * SMALL_NIGHT.events_per_night
    status = status_of(source)
    assert status.failed == 1 and status.view.consecutive_failures == 0


def test_an_unexpected_error_on_this_node_is_recorded_not_a_crash(source, make_node, monkeypatch):
    from meteorpi_server.exporter.source import StoreSource

    def broken_disk(self, record):
        raise OSError("Input/output error")

    monkeypatch.setattr(StoreSource, "open_file", broken_disk)
    target = make_node("central", 0).serve()
    add_export(source, target.import_url)
    summary = source.exporter().run_once()
    assert summary.targets["central"].target_failures == 1
    status = status_of(source)
    assert "unexpected error on this node: OSError: Input/output error" in status.view.last_error
    assert (status.done, status.failed) == (0, 0)
    assert status.view.lease_owner is None


def going_round_in_circles(camera_id: str, reply: dict):
    """A target that answers ``reply`` for every event of one camera (and for the
    ``cached_entity`` requests that follow), whatever the exporter sends."""
    stuck: set[str] = set()

    def wrap(app):
        def wsgi(environ, start_response):
            request = Request(environ)
            if request.method == "POST" and request.path == "/import":
                document = request.get_json(silent=True, cache=True) or {}
                event = document.get("event") or {}
                if event.get("camera_id") == camera_id:
                    stuck.add(event["event_id"])
                if event.get("event_id") in stuck or document.get("cached_entity_id") in stuck:
                    return Response(json.dumps(reply), 200, content_type="application/json")(
                        environ, start_response)
                environ["wsgi.input"] = _Body(request.get_data())
            return app(environ, start_response)
        return wsgi
    return wrap


@pytest.mark.parametrize("reply, reason", [
    ({"state": "need_file_data", "file_id": uuid.uuid4().hex}, "which is not part of this entity"),
    ({"state": "continue"}, "no outcome after"),
], ids=["foreign-file", "endless-continue"])
def test_an_entity_the_target_goes_round_in_circles_over_is_refused_not_the_target(
        source, make_node, reply, reason):
    target = make_node("central", 0, batch_protocol=False).serve(going_round_in_circles("demo-cam-1", reply))
    add_export(source, target.import_url)
    exporter = source.exporter(max_failures=2, backoff=Backoff(0, 0))
    first = exporter.run_once().targets["central"]
    # The other camera's events went on; the target was never blamed.
    assert (first.entities_sent, first.target_failures) == (SMALL_NIGHT.events_per_night, 0)
    assert first.refused >= SMALL_NIGHT.events_per_night
    exporter.run_once()
    status = status_of(source)
    assert status.view.state() == "enabled" and status.view.consecutive_failures == 0
    # Each stuck entity was charged twice (max_failures=2), then given up on, with why.
    stuck = SMALL_NIGHT.events_per_night
    assert (status.done, status.pending, status.failed) == (SMALL_NIGHT.events_per_night, 0, stuck)
    assert_given_up(source, status, count=stuck, attempts=2, reason=reason)


def test_a_target_that_answers_who_it_is_is_up_even_if_it_refuses_everything(source, make_node):
    target = make_node("central", 0, batch_protocol=False).serve(refusing("demo-cam-1", "demo-cam-2"))
    add_export(source, target.import_url)
    with source.services.database.write() as session:
        row = configs.get_row(session, "central")
        row.consecutive_failures, row.last_error = 3, "earlier trouble"
    summary = source.exporter(max_failures=4).run_once().targets["central"]
    assert (summary.entities_sent, summary.target_failures) == (0, 0)
    status = status_of(source)
    assert status.view.consecutive_failures == 0, "one more failure must not disable it now"
    assert status.view.last_success_at is not None


def test_a_hiccup_on_get_import_keeps_the_targets_server_id(source, make_node):
    hiccup = threading.Event()

    def sometimes_lost(app):
        def wsgi(environ, start_response):
            if hiccup.is_set() and environ["REQUEST_METHOD"] == "GET":
                return Response("<html>Not Found</html>", 404, content_type="text/html")(
                    environ, start_response)
            return app(environ, start_response)
        return wsgi

    target = make_node("central", 0).serve(sometimes_lost)
    add_export(source, target.import_url)
    source.exporter().run_once()
    assert status_of(source).view.target_server_id == target.server_id
    hiccup.set()
    source.exporter().run_once()
    view = status_of(source).view
    # Still known: records that came from the target are still never sent back to it.
    assert view.target_server_id == target.server_id
    assert view.target_checked_at is not None


def test_a_target_that_answers_who_it_is_but_forbids_every_import_is_still_disabled(source, make_node):
    def forbidding_imports(app):
        def wsgi(environ, start_response):
            if environ["REQUEST_METHOD"] == "POST":
                return Response('{"error": "forbidden"}', 403,
                                content_type="application/json")(environ, start_response)
            return app(environ, start_response)
        return wsgi

    target = make_node("central", 0).serve(forbidding_imports)
    add_export(source, target.import_url)
    exporter = source.exporter(max_failures=3, backoff=Backoff(0, 0))
    for _ in range(3):
        exporter.run_once()
    status = status_of(source)
    assert not status.view.configuration.enabled, "GET /import answering must not mask the failures"
    assert "403" in status.view.disabled_reason


# Targets that fail part-way through (the legacy handshake) ---------------------------------

# The exporter's read timeout against a MidExchangeFault: long enough for a loaded
# machine's real answers, short against how long a "slow" fault keeps silent.
MID_EXCHANGE_READ_TIMEOUT = 2.0
SLOW_SECONDS = 10


class MidExchangeFault:
    """A real target, logged by ImportLog, that starts to misbehave part-way through a run:
    once it has completed ``after`` entities it lets ``let_through`` more requests pass
    (the next entity's exchange is under way) and then, while ``armed``, answers every
    request with ``mode``: ``error`` (500), ``slow`` (no answer within the exporter's read
    timeout), ``close`` (the connection dropped without an answer). A failed request never
    reaches the server, so what the log saw completed is all the target holds."""

    def __init__(self, mode: str, after: int = 1, let_through: int = 2):
        self.mode, self.after, self.let_through = mode, after, let_through
        self.armed = True
        self.failed = 0
        self.log: ImportLog | None = None
        self._passed = 0
        self._lock = threading.Lock()
        self._release = threading.Event()

    def wrap(self, app):
        self.log = ImportLog(app)

        def wsgi(environ, start_response):
            with self._lock:
                if self.armed and self.log.complete_count() >= self.after:
                    self._passed += 1
                fail = self.armed and self._passed > self.let_through
                self.failed += fail
            if not fail:
                return self.log(environ, start_response)
            if self.mode == "slow":
                self._release.wait(SLOW_SECONDS)
            if self.mode == "close":
                environ["werkzeug.socket"].shutdown(socket.SHUT_RDWR)
                start_response("200 OK", [])
                return [b""]
            return Response("database is on fire", 500)(environ, start_response)
        return wsgi

    def disarm(self) -> None:
        self.armed = False
        self._release.set()


@pytest.mark.parametrize("mode, reason", [
    ("error", "500"),  # an upload's retries give up with "500 asking for the offset"
    ("slow", "timed out"),
    ("close", "closed the connection without answering"),
])
def test_a_target_failing_mid_exchange_loses_nothing_and_a_later_run_completes(
        source, make_node, mode, reason):
    fault = MidExchangeFault(mode)
    target = make_node("central", 0, batch_protocol=False).serve(fault.wrap)
    add_export(source, target.import_url)
    summary = source.exporter(read_timeout=MID_EXCHANGE_READ_TIMEOUT,
                              backoff=Backoff(60_000, 600_000)).run_once()
    fault_hit = fault.failed
    assert fault_hit >= 1, "the fault must have been reached"
    assert summary.targets["central"].target_failures == 1
    status = status_of(source)
    assert status.view.state() == "backing off" and status.view.consecutive_failures == 1
    assert reason in status.view.last_error
    # Done is exactly what the target confirmed: the first entity, not the one cut short.
    confirmed = set(fault.log.completions())
    assert len(confirmed) == 1
    with source.services.database.read() as session:
        rows = session.scalars(select(ExportTaskRow)
                               .where(ExportTaskRow.config_id == status.view.config_id)).all()
    assert {row.entity_id.hex for row in rows if row.state == tasks.DONE} == confirmed
    assert all(row.attempts == 0 for row in rows), "a target failure charges no task"
    # Backing off: the next run leaves the target alone.
    assert source.exporter().run_once().targets["central"].skipped == "backing off"
    assert fault.failed == fault_hit

    fault.disarm()
    with source.services.database.write() as session:
        configs.get_row(session, "central").next_attempt_at = 0
    assert source.exporter().run_once().targets["central"].failures == 0
    status = status_of(source)
    assert (status.pending, status.failed, status.done) == (0, 0, len(record_ids(source)["events"]))
    assert_same_records_for_events(source, target)
    assert all(count == 1 for count in fault.log.completions().values()), \
        "an entity the target had confirmed was sent again"


def test_a_target_that_lost_an_entity_from_its_cache_gets_it_again_in_full(source, make_node):
    # A cache of one entity: sending a status pushes out the event that needed it, so the
    # cached_entity that follows misses and the target answers continue-nocache.
    log = None

    def wrap(app):
        nonlocal log
        log = ImportLog(app)
        return log

    target = make_node("central", 0, batch_protocol=False, import_cache_size=1).serve(wrap)
    add_export(source, target.import_url)
    summary = source.exporter().run_once().targets["central"]
    assert summary.failures == 0
    misses = [index for index, (kind, _, state) in enumerate(log.entries)
              if kind == "cached_entity" and state == "continue-nocache"]
    assert misses, "the target never answered continue-nocache"
    for index in misses:
        entity_id = log.entries[index][1]
        following = [entry for entry in log.entries[index + 1:] if entry[1] == entity_id]
        assert following[0][0] == "event", "continue-nocache is followed by the whole entity"
        assert following[-1][2] == "complete"
    status = status_of(source)
    assert (status.pending, status.failed) == (0, 0)
    assert_same_records_for_events(source, target)


# Claims on the work -------------------------------------------------------------------------

def held_target(make_node, hold_after: int):
    """A legacy-only target whose ImportLog holds the request for the entity after
    ``hold_after`` completes until its gate is opened."""
    log = None

    def wrap(app):
        nonlocal log
        log = ImportLog(app, hold_after=hold_after)
        return log

    return make_node("central", 0, batch_protocol=False).serve(wrap), log


def lease_of(node) -> tuple[str | None, int | None]:
    view = status_of(node).view
    return view.lease_owner, view.lease_expires_at


def run_in_thread(exporter):
    summaries = []
    thread = threading.Thread(target=lambda: summaries.append(exporter.run_once()), daemon=True)
    thread.start()
    return thread, summaries


def test_an_exporter_keeps_its_claim_through_a_request_longer_than_the_lease(source, make_node):
    target, log = held_target(make_node, hold_after=1)
    add_export(source, target.import_url)
    thread, summaries = run_in_thread(source.exporter(lease_seconds=0.6, read_timeout=60))
    wait_until(log.holding.is_set, what="the exporter to reach the held request")
    owner, expires = lease_of(source)
    # Two whole leases go by inside one request: only renewal keeps the claim.
    wait_until(lambda: (lease_of(source)[1] or 0) > expires + 1200, what="the lease to be renewed")
    assert lease_of(source)[0] == owner
    other = source.exporter(lease_seconds=0.6).run_once()
    assert other.targets["central"].skipped == "another exporter is working on it"
    log.hold_after = None
    log.gate.set()
    thread.join(60)
    assert summaries[0].targets["central"].failures == 0
    status = status_of(source)
    assert (status.pending, status.failed) == (0, 0)
    assert status.view.lease_owner is None, "the claim is let go at the end"
    assert all(count == 1 for count in log.completions().values())


def test_an_exporter_that_lost_its_claim_leaves_the_work_to_the_one_that_took_it(
        source, make_node, caplog):
    target, log = held_target(make_node, hold_after=1)
    add_export(source, target.import_url)
    thread, summaries = run_in_thread(source.exporter(lease_seconds=0.6, read_timeout=60))
    wait_until(log.holding.is_set, what="the exporter to reach the held request")
    # Another exporter takes the configuration over (as if this one had stalled past
    # its lease).
    with source.services.database.write() as session:
        configs.get_row(session, "central").lease_owner = "elsewhere:1:beef"
        configs.get_row(session, "central").lease_expires_at = store.now_ms() + 600_000
    wait_until(lambda: "another exporter took this configuration over" in caplog.text,
               what="the exporter to notice")
    log.hold_after = None
    log.gate.set()
    thread.join(60)
    # It finished the entity in flight and sent nothing after it.
    status = status_of(source)
    assert status.done <= 2 and status.pending >= 4, "the rest is left to the claim's holder"
    assert status.view.lease_owner == "elsewhere:1:beef", "it did not free another's claim"
    assert status.view.consecutive_failures == 0, "losing a claim is not the target's fault"
