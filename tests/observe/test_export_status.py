"""GET /exports/status: each configuration's state, backlog and what its target took, as
data; the counters after a real replication between two nodes."""
from __future__ import annotations

import datetime
import uuid

import pytest
import yaml
from click.testing import CliRunner
from conftest import PASSWORD, free_port
from export_nodes import (  # noqa: F401
    EXPORT_USER,
    extra_postgres_databases,
    make_node,
    node_database,
)
from sqlalchemy import func, select

from meteorpi_model import EventSearch, ExportConfiguration, FileSearch
from meteorpi_server.cli import main
from meteorpi_server.exporter import configs, report, tasks
from meteorpi_server.exporter.tasks import Backoff
from meteorpi_server.node.demo import DemoPlan, generate
from meteorpi_server.storage.orm import FileRecordRow, UserRoleRow, UserRow

SMALL = DemoPlan(cameras=2, nights=1, events_per_night=3, files_per_event=2, standalone_files=2,
                 file_size=700, first_night=datetime.date(2026, 11, 1))
ADMIN = "admin"


def add_export(node, name: str, target_url: str, kind: str = "event") -> None:
    configuration = ExportConfiguration(
        config_id=uuid.uuid4(), name=name, target_url=target_url, user_id=EXPORT_USER,
        password=PASSWORD, search=EventSearch() if kind == "event" else FileSearch())
    with node.services.database.write() as session:
        configs.add(session, configuration)


def add_user(node, name: str, *roles: str) -> tuple[str, str]:
    from conftest import CHEAP_HASH_METHOD
    from werkzeug.security import generate_password_hash

    with node.services.database.write() as session:
        session.add(UserRow(name=name, created_at=0,
                            password_hash=generate_password_hash(PASSWORD, method=CHEAP_HASH_METHOD),
                            roles=[UserRoleRow(role=role) for role in roles]))
    return name, PASSWORD


def status_by_name(node, auth) -> dict[str, dict]:
    response = node.app.test_client().get("/exports/status", auth=auth)
    assert response.status_code == 200, response.get_json()
    return {entry["name"]: entry for entry in response.get_json()["exports"]}


def export_run_once(node, tmp_path) -> None:
    config = tmp_path / f"{node.name}.yaml"
    config.write_text(yaml.safe_dump({**node.settings, "log_level": "warning"}))
    result = CliRunner().invoke(main, ["--config", str(config), "export", "run", "--once"],
                                catch_exceptions=False)
    assert result.exit_code == 0, result.output


def file_totals(node, stand_alone: bool) -> tuple[int, int]:
    """How many files (of events, or stand-alone) the node holds, and their bytes."""
    condition = (FileRecordRow.event_id.is_(None) if stand_alone
                 else FileRecordRow.event_id.is_not(None))
    with node.services.database.read() as session:
        count, size = session.execute(select(func.count(), func.sum(FileRecordRow.file_size))
                                      .where(condition)).one()
    return count, int(size or 0)


@pytest.mark.parametrize("protocol", ["v2", "legacy"])
def test_sent_counters_after_a_real_replication(make_node, tmp_path, protocol):
    source = make_node("source")
    generate(source.recorder, SMALL)
    target = make_node("central", 0, batch_protocol=protocol == "v2").serve()
    add_export(source, "events", target.import_url, "event")
    add_export(source, "frames", target.import_url, "file")
    admin = add_user(source, ADMIN, "camera_admin")

    before = status_by_name(source, admin)
    assert before["events"]["sent"] == {"entities": 0, "files": 0, "bytes": 0}
    assert before["events"]["backlog"] == {"pending": 0, "failed": 0, "counted": False}
    assert before["events"]["last_success_at"] is None

    export_run_once(source, tmp_path)
    after = status_by_name(source, admin)
    event_files, event_bytes = file_totals(source, stand_alone=False)
    frames, frame_bytes = file_totals(source, stand_alone=True)
    events = SMALL.cameras * SMALL.nights * SMALL.events_per_night
    assert after["events"]["sent"] == {"entities": events, "files": event_files,
                                       "bytes": event_bytes}
    assert after["frames"]["sent"] == {"entities": frames, "files": frames, "bytes": frame_bytes}
    assert event_files == events * SMALL.files_per_event and event_bytes > 0
    # The target holds what the counters say it took.
    assert target.counts()["files"] == event_files + frames
    # meteorpi export status says the same on the node's shell.
    with source.services.database.read() as session:
        text = report.format_status(report.gather(session))
    assert f"sent:         {events} entities, {event_files} files" in text
    for entry in after.values():
        assert entry["state"] == "idle"
        assert entry["backlog"] == {"pending": 0, "failed": 0, "counted": True}
        assert entry["last_success_at_ms"] is not None
        assert entry["last_success_at"].endswith("Z")
        assert entry["consecutive_failures"] == 0 and entry["last_error"] is None
        assert entry["target_url"] == target.import_url

    # A second run finds nothing new: the counters stay as they were.
    export_run_once(source, tmp_path)
    again = status_by_name(source, admin)
    assert {name: entry["sent"] for name, entry in again.items()} == {
        name: entry["sent"] for name, entry in after.items()}


def test_states_idle_backing_off_disabled_and_running(make_node):
    node = make_node("source")
    generate(node.recorder, SMALL)
    closed = f"http://127.0.0.1:{free_port()}/import"
    for name in ("quiet", "failing", "switched-off", "busy", "stale-claim"):
        add_export(node, name, closed)
    admin = add_user(node, ADMIN, "camera_admin")
    database = node.services.database
    with database.write() as session:
        configs.disable(session, "switched-off")
        busy = configs.get_row(session, "busy")
        assert tasks.take_lease(session, busy.config_id, "host-a:123:abcd", 300)
        stale = configs.get_row(session, "stale-claim")
        stale.lease_owner, stale.lease_expires_at = "host-b:9:ffff", 1  # expired long ago
    # A real failure of the target: nothing listens at its port.
    exporter = node.exporter(backoff=Backoff(3_600_000, 7_200_000))
    with database.read() as session:
        failing_id = configs.get_row(session, "failing").config_id
    summary = exporter.export_config(failing_id)
    assert summary.target_failures == 1

    states = status_by_name(node, admin)
    assert {name: entry["state"] for name, entry in states.items()} == {
        "quiet": "idle", "failing": "backing_off", "switched-off": "disabled",
        "busy": "running", "stale-claim": "idle"}

    failing = states["failing"]
    assert failing["consecutive_failures"] == 1
    assert "127.0.0.1" in failing["last_error"] and failing["last_error_at_ms"] is not None
    assert failing["until_ms"] == failing["next_attempt_at_ms"] > failing["last_error_at_ms"]
    assert failing["until"] == failing["next_attempt_at"]
    assert failing["disabled_reason"] is None and failing["lease_owner"] is None

    switched_off = states["switched-off"]
    assert switched_off["disabled_reason"] == configs.DISABLED_BY_ADMIN
    assert switched_off["until"] is None

    assert states["busy"]["lease_owner"] == "host-a:123:abcd"
    assert states["busy"]["lease_expires_at_ms"] > failing["last_error_at_ms"]
    assert states["stale-claim"]["lease_owner"] is None
    assert states["quiet"]["until"] is None and states["quiet"]["disabled_reason"] is None


def test_backlog_counts_pending_and_failed_tasks(make_node):
    node = make_node("source")
    generate(node.recorder, SMALL)
    add_export(node, "central", f"http://127.0.0.1:{free_port()}/import")
    from meteorpi_server.exporter.marking import mark

    with node.services.database.write() as session:
        row = configs.get_row(session, "central")
        tasks.note_target_identity(session, row.config_id, None)
        marked = mark(session, row)
        due = tasks.due_tasks(session, row.config_id, 2)
        tasks.give_up(session, due[0], "gone")
        tasks.complete(session, due[1])
    with node.services.database.read() as session:
        (entry,) = report.replication_status(session, 0)
    assert entry["backlog"] == {"pending": marked - 2, "failed": 1, "counted": True}
    assert marked == SMALL.cameras * SMALL.nights * SMALL.events_per_night


def test_the_route_needs_camera_admin(make_node):
    node = make_node("source")
    client = node.app.test_client()
    assert client.get("/exports/status").status_code == 401
    reader = add_user(node, "reader", "user", "import")
    response = client.get("/exports/status", auth=reader)
    assert response.status_code == 403
    assert response.get_json()["role"] == "camera_admin"
    admin = add_user(node, ADMIN, "camera_admin")
    assert client.get("/exports/status", auth=admin).get_json()["exports"] == []


def test_status_is_a_reserved_name_and_the_route_is_not_shadowed(make_node):
    node = make_node("source")
    admin = add_user(node, ADMIN, "camera_admin")
    client = node.app.test_client()
    document = {"config_id": uuid.uuid4().hex, "name": "status",
                "target_url": "http://127.0.0.1:1/import", "user_id": EXPORT_USER,
                "password": PASSWORD, "type": "event", "search": {}}
    response = client.post("/exports", json=document, auth=admin)
    assert response.status_code == 400, response.get_json()
    assert response.get_json()["field"] == "name"
    assert "reserved" in response.get_json()["message"]
    # Other names still work next to it, at /exports/<name>.
    response = client.post("/exports", json={**document, "name": "statuses"}, auth=admin)
    assert response.status_code == 201, response.get_json()
    assert client.get("/exports/statuses", auth=admin).get_json()["name"] == "statuses"
    body = client.get("/exports/status", auth=admin).get_json()
    assert [entry["name"] for entry in body["exports"]] == ["statuses"]
    assert body["now_ms"] > 0 and body["now"].endswith("Z")
