"""The exporter end to end: nodes with their own databases and file stores, over real sockets."""
from __future__ import annotations

import datetime
import signal
import subprocess
import sys
import threading
import uuid

import pytest
import yaml
from click.testing import CliRunner
from conftest import PASSWORD
from export_nodes import (  # noqa: F401
    EXPORT_USER,
    ImportLog,
    assert_same_records,
    extra_postgres_databases,
    make_node,
    node_database,
    record_ids,
    wait_until,
)
from sqlalchemy import select

from meteorpi_model import EventSearch, ExportConfiguration, FileSearch
from meteorpi_server.cli import main
from meteorpi_server.exporter import configs, report
from meteorpi_server.node.demo import DemoPlan, generate
from meteorpi_server.storage import store
from meteorpi_server.storage.orm import CameraStatusRow

# Several cameras over several nights, with status changes (a camera re-aimed on the third).
NIGHTS = DemoPlan(cameras=3, nights=3, events_per_night=3, files_per_event=3, standalone_files=2,
                  file_size=3000, first_night=datetime.date(2026, 11, 1))
# Enough to tell targets apart, for tests about who gets what rather than about the data.
SMALL = DemoPlan(cameras=2, nights=1, events_per_night=3, files_per_event=2, standalone_files=1,
                 file_size=500, first_night=datetime.date(2026, 11, 1))


def add_export(node, name: str, import_url: str, kind: str = "event", search=None, **fields):
    search = search or (EventSearch() if kind == "event" else FileSearch())
    configuration = ExportConfiguration(config_id=uuid.uuid4(), name=name, target_url=import_url,
                                        user_id=EXPORT_USER, password=PASSWORD, search=search,
                                        **fields)
    with node.services.database.write() as session:
        configs.add(session, configuration)


def export_everything(source, target, prefix: str = "to") -> None:
    add_export(source, f"{prefix}-{target.name}-events", target.import_url, "event")
    add_export(source, f"{prefix}-{target.name}-files", target.import_url, "file")


def backlog(node) -> dict[str, dict]:
    with node.services.database.read() as session:
        return {status.view.name: {"pending": status.pending, "done": status.done,
                                   "failed": status.failed, "state": status.view.state()}
                for status in report.gather(session)}


def write_config(node, path) -> str:
    path.write_text(yaml.safe_dump({**node.settings, "log_level": "info",
                                    "export_backoff_seconds": 0.05,
                                    "export_backoff_max_seconds": 0.2,
                                    "export_upload_retry_seconds": 0.05}))
    return str(path)


@pytest.fixture
def source(make_node):
    node = make_node("source")
    generate(node.recorder, NIGHTS)
    return node


@pytest.fixture
def small_source(make_node):
    node = make_node("source")
    generate(node.recorder, SMALL)
    return node


def test_export_run_once_replicates_every_record_and_byte(source, make_node, tmp_path):
    target = make_node("central", 0).serve()
    export_everything(source, target)
    result = CliRunner().invoke(main, ["--config", write_config(source, tmp_path / "source.yaml"),
                                       "export", "run", "--once"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert_same_records(source, target)
    events, files = len(record_ids(source)["events"]), len(record_ids(source)["files"])
    assert f"{events} entities sent, {events * NIGHTS.files_per_event} files" in result.output
    assert f"{files} entities sent, {files} files" in result.output
    assert all(counts["pending"] == 0 and counts["failed"] == 0 for counts in backlog(source).values())


@pytest.mark.parametrize("protocol", ["v2", "legacy"])
def test_a_second_run_sends_nothing(source, make_node, protocol):
    target = make_node("central", 0, batch_protocol=protocol == "v2")
    log = None

    def wrap(app):
        nonlocal log
        log = ImportLog(app)
        return log

    target.serve(wrap)
    export_everything(source, target)
    first = source.exporter().run_once()
    sent = len(log.entries)
    second = source.exporter().run_once()
    assert first.entities_sent == len(record_ids(source)["events"]) + len(record_ids(source)["files"])
    assert second.entities_sent == 0 and second.failures == 0
    kinds = {kind for kind, _, _ in log.entries[:sent]}
    if protocol == "v2":  # the exporter picks the batches, and finds nothing left in a plan
        assert kinds == {"plan", "statuses", "files", "records"}
        assert log.entries[sent:] == []  # nothing new was marked, so nothing to plan
    else:  # the target does not offer v2: the legacy handshake, entity by entity
        assert kinds == {"event", "file", "status", "cached_entity"}
        assert len(log.entries) == sent


def test_new_records_are_marked_and_sent_on_the_next_run(small_source, make_node):
    target = make_node("central", 0).serve()
    export_everything(small_source, target)
    small_source.exporter().run_once()
    with small_source.services.database.read() as session:
        sent_open = session.scalar(select(CameraStatusRow.status_id).where(
            CameraStatusRow.camera_id == "demo-cam-1", CameraStatusRow.valid_to.is_(None)))
    generate(small_source.recorder, DemoPlan(cameras=1, nights=1, events_per_night=2, standalone_files=1,
                                       file_size=100, first_night=datetime.date(2026, 11, 10)))
    summary = small_source.exporter().run_once()
    assert summary.entities_sent == 3
    # The new night's status ended the one sent while it was current, on both sides.
    with target.services.database.read() as session:
        assert store.get_status(session, sent_open).valid_to is not None
    assert_same_records(small_source, target)


def test_a_search_limits_what_is_exported(small_source, make_node):
    target = make_node("central", 0).serve()
    add_export(small_source, "cam1-events", target.import_url, "event",
               EventSearch(camera_ids=["demo-cam-1"]))
    small_source.exporter().run_once()
    ids = record_ids(target)
    with small_source.services.database.read() as session:
        from meteorpi_server.reading import searches
        expected = {event.event_id for event in searches.search_events(
            session, EventSearch(camera_ids=["demo-cam-1"], limit=1000)).items}
    assert ids["events"] == expected and ids["files"] == set()


def test_two_servers_exporting_to_each_other_do_not_send_records_back(small_source, make_node):
    other = make_node("other", 0).serve()
    small_source.serve()
    export_everything(small_source, other)
    export_everything(other, small_source, prefix="back")
    generate(other.recorder, DemoPlan(cameras=1, nights=1, events_per_night=2, standalone_files=1,
                                      file_size=100, first_night=datetime.date(2026, 11, 12)))
    small_source.exporter().run_once()
    back = other.exporter().run_once()
    # The other server only sends back what it made itself, never what came from the source.
    assert back.entities_sent == 3
    assert record_ids(small_source) == record_ids(other)
    again = small_source.exporter().run_once()
    assert again.entities_sent == 0, "records that came from the target are not sent back"


def as_legacy_server(app):
    """The app as the original server looked: no discovery document, no resumable uploads."""

    def wsgi(environ, start_response):
        if environ["REQUEST_METHOD"] != "POST" and environ["PATH_INFO"].startswith("/import"):
            start_response("405 Method Not Allowed", [("Content-Type", "text/html")])
            return [b"<h1>405</h1>"]
        return app(environ, start_response)

    return wsgi


def test_a_legacy_target_gets_everything_too(small_source, make_node):
    target = make_node("legacy", 0).serve(as_legacy_server)
    export_everything(small_source, target)
    summary = small_source.exporter().run_once()
    assert summary.failures == 0
    assert_same_records(small_source, target)
    with small_source.services.database.read() as session:
        view = configs.get(session, "to-legacy-events")
    assert view.target_server_id is None and view.target_checked_at is not None


def test_a_target_that_is_this_server_disables_the_configuration(small_source):
    small_source.serve()
    add_export(small_source, "loop", small_source.import_url)
    summary = small_source.exporter().run_once()
    assert summary.targets["loop"].disabled
    with small_source.services.database.read() as session:
        assert "this server itself" in configs.get(session, "loop").disabled_reason


@pytest.mark.slow
def test_fan_out_two_targets_finish_while_a_third_is_down_then_it_catches_up(small_source, make_node):
    up = [make_node(f"central{index}", index).serve() for index in (0, 1)]
    down = make_node("central2", 2).serve()
    for target in up + [down]:
        export_everything(small_source, target)
    down.stop_serving()
    stop = threading.Event()
    exporter = small_source.exporter(max_failures=0)  # never disable: the third must catch up
    runner = threading.Thread(target=exporter.run_forever, args=(stop,), daemon=True)
    runner.start()
    try:
        def others_done() -> bool:
            counts = backlog(small_source)
            return all(counts[f"to-{node.name}-{kind}"]["done"]
                       and not counts[f"to-{node.name}-{kind}"]["pending"]
                       for node in up for kind in ("events", "files"))

        wait_until(others_done, what="the two reachable targets to finish")
        for target in up:
            assert_same_records(small_source, target)
        def third_failed() -> bool:
            with small_source.services.database.read() as session:
                return configs.get(session, "to-central2-events").last_error is not None

        # The others may finish before the exporter has even given up connecting to it.
        wait_until(third_failed, what="the exporter to record the third target's failure")
        assert backlog(small_source)["to-central2-events"]["done"] == 0
        down.serve()
        wait_until(lambda: backlog(small_source)["to-central2-events"]["pending"] == 0
                   and backlog(small_source)["to-central2-files"]["pending"] == 0
                   and record_ids(down) == record_ids(small_source),
                   what="the third target to catch up")
    finally:
        stop.set()
        runner.join(30)
    assert not runner.is_alive()
    assert_same_records(small_source, down)


@pytest.mark.slow
def test_killing_the_exporter_mid_run_then_resuming_sends_nothing_twice(source, make_node, tmp_path):
    # The legacy handshake, whose requests the log can hold one entity at a time (batches:
    # tests/imports/test_batch_faults.py).
    target = make_node("central", 0, batch_protocol=False)
    hold_after = 5
    log = None

    def wrap(app):
        nonlocal log
        log = ImportLog(app, hold_after=hold_after)
        return log

    target.serve(wrap)
    # One configuration, so one entity at a time is in flight.
    add_export(source, "central", target.import_url)
    config_path = write_config(source, tmp_path / "source.yaml")
    process = subprocess.Popen([sys.executable, "-m", "meteorpi_server", "--config", config_path,
                                "export", "run"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        # The target holds the request after five entities: the exporter is mid-entity.
        wait_until(log.holding.is_set, what="the exporter to reach the held request")
        process.send_signal(signal.SIGKILL)
        process.wait(30)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        log.hold_after = None
        log.gate.set()
    confirmed_before = set(log.completions())
    assert len(confirmed_before) == hold_after
    with source.services.database.read() as session:
        pending_or_done = report.gather(session)
    assert sum(status.done for status in pending_or_done) == hold_after

    result = CliRunner().invoke(main, ["--config", config_path, "export", "run", "--once"],
                                catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert record_ids(target)["events"] == record_ids(source)["events"]
    completions = log.completions()
    assert all(completions[entity_id] == 1 for entity_id in confirmed_before), \
        "an entity the target had confirmed was sent again"
    assert all(count == 1 for count in completions.values())


@pytest.mark.slow
def test_sigterm_stops_export_run_cleanly(source, make_node, tmp_path):
    target = make_node("central", 0, batch_protocol=False)  # entity by entity: stops between
    log = None

    def wrap(app):
        nonlocal log
        log = ImportLog(app)
        return log

    target.serve(wrap)
    export_everything(source, target)
    config_path = write_config(source, tmp_path / "source.yaml")
    process = subprocess.Popen([sys.executable, "-m", "meteorpi_server", "--config", config_path,
                                "export", "run"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               text=True)
    try:
        wait_until(lambda: log.complete_count() >= 1, what="the first entity to be sent")
        process.send_signal(signal.SIGTERM)
        output, _ = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == 0, output
    assert "stopping after the entities in flight" in output
    assert "export summary:" in output
    with source.services.database.read() as session:
        views = configs.list_views(session)
    assert all(view.lease_owner is None for view in views), "the exporter let go of its work"
    assert sum(counts["done"] for counts in backlog(source).values()) == log.complete_count()


def test_tasks_of_a_disabled_configuration_wait(small_source, make_node):
    target = make_node("central", 0).serve()
    add_export(small_source, "paused", target.import_url, enabled=False)
    summary = small_source.exporter().run_once()
    assert summary.targets == {}
    assert record_ids(target)["events"] == set()
    with small_source.services.database.write() as session:
        configs.enable(session, "paused")
    assert small_source.exporter().run_once().entities_sent == len(record_ids(small_source)["events"])
    assert backlog(small_source)["paused"] == {"pending": 0, "done": len(record_ids(small_source)["events"]),
                                         "failed": 0, "state": "enabled"}


@pytest.mark.slow
def test_sigterm_on_protocol_v2_stops_within_one_upload_and_the_next_run_resumes(source, make_node,
                                                                                tmp_path):
    # Bundles of three files (one event's), one upload at a time: a batch is a long row
    # of uploads, and the first is held until the exporter has taken note of the stop.
    target = make_node("central", 0, batch_max_bundle_bytes=3 * NIGHTS.file_size + 600)
    held, gate = threading.Event(), threading.Event()
    bundles = []

    def hold_the_first_bundle(app):
        def wsgi(environ, start_response):
            if environ["PATH_INFO"] == "/import/batch/files":
                bundles.append(environ["CONTENT_LENGTH"])
                if len(bundles) == 1:
                    held.set()
                    gate.wait(60)
            return app(environ, start_response)
        return wsgi

    target.serve(hold_the_first_bundle)
    add_export(source, "central", target.import_url)
    config_path = tmp_path / "source.yaml"
    config_path.write_text(yaml.safe_dump({**source.settings, "log_level": "info",
                                           "export_concurrency": 1}))
    process = subprocess.Popen([sys.executable, "-m", "meteorpi_server", "--config",
                                str(config_path), "export", "run"],
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(process.stdout), daemon=True)
    reader.start()
    try:
        wait_until(held.is_set, what="the exporter's first bundle")
        process.send_signal(signal.SIGTERM)
        wait_until(lambda: any("stopping after the entities in flight" in line for line in lines),
                   what="the exporter to take note of the stop")
        gate.set()
        process.wait(60)
        reader.join(10)
    finally:
        gate.set()
        if process.poll() is None:
            process.kill()
            process.wait()
    output = "".join(lines)
    assert process.returncode == 0, output
    assert "export summary:" in output
    events = len(record_ids(source)["events"])
    assert len(bundles) == 1, f"{len(bundles)} of {events} bundles were sent after all"
    with source.services.database.read() as session:
        assert all(view.lease_owner is None for view in configs.list_views(session))
    # What the target confirmed is done (the held bundle's event, whose files had all made
    # it, went in a records request); nothing else is.
    done = backlog(source)["central"]["done"]
    assert 0 < done == len(record_ids(target)["events"]) < events

    result = CliRunner().invoke(main, ["--config", str(config_path), "export", "run", "--once"],
                                catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert record_ids(target)["events"] == record_ids(source)["events"]
    assert backlog(source)["central"] == {"pending": 0, "done": events, "failed": 0,
                                          "state": "enabled"}
