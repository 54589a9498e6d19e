"""Managing export configurations: the ``meteorpi export`` commands and the /exports API.

The target password goes in and is used, but never comes out: not printed, not logged,
not returned.
"""
from __future__ import annotations

import logging

import pytest
import yaml
from click.testing import CliRunner

from meteorpi_server.cli import main
from meteorpi_server.exporter import configs

SECRET = "s3cret-target-password"


@pytest.fixture
def config_file(tmp_path, database_url):
    path = tmp_path / "node.yaml"
    path.write_text(yaml.safe_dump({"database_url": database_url,
                                    "file_store": str(tmp_path / "files")}))
    return path


def meteorpi(config_file, *args, input=None):
    return CliRunner().invoke(main, ["--config", str(config_file), *args], input=input,
                              catch_exceptions=False)


def add(config_file, name="central", *extra, target="https://central.example.org/import"):
    return meteorpi(config_file, "export", "add", name, "--target", target, "--user", "node-7",
                    "--password-stdin", *extra, input=SECRET + "\n")


def stored(services, name="central"):
    with services.database.read() as session:
        return configs.get(session, name)


# The command ------------------------------------------------------------------------------

def test_export_add_as_operators_script_it(config_file, services):
    result = add(config_file, "central", "--events", "--camera", "cam-1", "--camera", "cam-2",
                 "--after", "2026-11-01", "--event-type", "meteorpi:meteor",
                 "--description", "to the university")
    assert result.exit_code == 0, result.output
    assert "added export central: events to https://central.example.org/import" in result.output
    view = stored(services)
    configuration = view.configuration
    assert configuration.enabled and configuration.type == "event"
    assert configuration.password == SECRET and configuration.user_id == "node-7"
    assert configuration.search.camera_ids == ["cam-1", "cam-2"]
    assert configuration.search.after == 1_793_491_200_000  # 2026-11-01T00:00:00Z
    assert str(configuration.search.event_type) == "meteorpi:meteor"
    assert configuration.description == "to the university"


def test_stand_alone_files_and_added_disabled(config_file, services):
    result = add(config_file, "frames", "--files", "--semantic-type", "meteorpi:timelapse",
                 "--mime-type", "image/png", "--disabled")
    assert result.exit_code == 0, result.output
    configuration = stored(services, "frames").configuration
    assert configuration.type == "file" and not configuration.enabled
    assert configuration.search.mime_type == "image/png"


def test_list_show_enable_disable_status_and_remove(config_file, services):
    add(config_file, "central", "--events")
    add(config_file, "frames", "--files")
    listing = meteorpi(config_file, "export", "list").output
    assert listing.splitlines()[0].startswith("central\tenabled\tevents\thttps://central")
    assert listing.splitlines()[1].startswith("frames\tenabled\tfiles")
    assert meteorpi(config_file, "export", "disable", "central").output == "disabled export central\n"
    shown = meteorpi(config_file, "export", "show", "central").output
    assert "state:" in shown and "disabled" in shown and "(set)" in shown
    assert "disabled by an administrator" in shown
    assert meteorpi(config_file, "export", "enable", "central").exit_code == 0
    assert stored(services).configuration.enabled
    status = meteorpi(config_file, "export", "status").output
    assert "central -> https://central.example.org/import" in status
    assert "not counted yet" in status and "last success: never" in status
    assert meteorpi(config_file, "export", "remove", "frames").exit_code == 0
    assert meteorpi(config_file, "export", "list").output.count("\n") == 1


def test_the_password_is_never_printed(config_file):
    outputs = [add(config_file, "central", "--events").output]
    for command in (["list"], ["show", "central"], ["status"], ["disable", "central"],
                    ["enable", "central"]):
        outputs.append(meteorpi(config_file, "export", *command).output)
    assert all(SECRET not in output for output in outputs)


@pytest.mark.parametrize("extra, target, message", [
    ([], "https://c.example.org/import", "--events or --files"),
    (["--events", "--mime-type", "image/png"], "https://c.example.org/import",
     "--mime-type selects files"),
    (["--files", "--event-type", "meteorpi:meteor"], "https://c.example.org/import",
     "--event-type selects events"),
    (["--events"], "ftp://c.example.org/import", "target_url: must be an http:// or https:// URL"),
    (["--events"], "https://node:pw@c.example.org/import", "must not contain a user or password"),
    (["--events", "--camera", ""], "https://c.example.org/import", "camera_ids[0]"),
    (["--events", "--after", "last tuesday"], "https://c.example.org/import", "ISO 8601"),
    (["--events", "--search", "{not json"], "https://c.example.org/import", "not valid JSON"),
    (["--events", "--search", '{"lat_min": 100}'], "https://c.example.org/import",
     "search.lat_min: must be between -90 and 90"),
])
def test_bad_export_add_says_what_is_wrong(config_file, extra, target, message):
    result = add(config_file, "central", *extra, target=target)
    assert result.exit_code != 0
    assert message in result.output
    assert SECRET not in result.output


def test_names_are_unique_and_plain(config_file):
    assert add(config_file, "central", "--events").exit_code == 0
    again = add(config_file, "central", "--events")
    assert again.exit_code == 1 and "already exists" in again.output
    slash = add(config_file, "a/b", "--events")
    assert slash.exit_code == 1 and "name: must be 1-255 letters" in slash.output


def test_commands_on_an_unknown_name_say_how_to_find_names(config_file):
    for command in ("show", "enable", "disable", "remove", "retry"):
        result = meteorpi(config_file, "export", command, "nope")
        assert result.exit_code == 1
        assert "no export configuration named 'nope'" in result.output
        assert "meteorpi export list" in result.output


def test_run_once_with_nothing_configured_says_so(config_file):
    result = meteorpi(config_file, "export", "run", "--once")
    assert result.exit_code == 0
    assert "no enabled export configuration" in result.output


def test_a_missing_ca_bundle_is_a_clear_configuration_error(tmp_path, database_url):
    path = tmp_path / "node.yaml"
    path.write_text(yaml.safe_dump({"database_url": database_url,
                                    "export_ca_bundle": str(tmp_path / "missing.pem")}))
    result = meteorpi(path, "export", "run", "--once")
    assert result.exit_code == 1
    assert "export_ca_bundle" in result.output and "does not exist" in result.output


# The API ----------------------------------------------------------------------------------

@pytest.fixture
def admin(make_user):
    return make_user("operator", "camera_admin")


def new_export(name="central", **changes):
    document = {"type": "event", "name": name, "target_url": "https://central.example.org/import",
                "user_id": "node-7", "password": SECRET, "search": {"camera_ids": ["cam-1"]}}
    document.update(changes)
    return document


def test_the_api_adds_lists_shows_changes_and_removes(client, admin, services):
    created = client.post("/exports", json=new_export(description="night sky"), auth=admin)
    assert created.status_code == 201, created.json
    assert created.headers["Location"].endswith("/exports/central")
    assert created.json["name"] == "central" and created.json["password_set"] is True
    assert created.json["tasks"] == {"pending": 0, "done": 0, "failed": 0}
    assert [export["name"] for export in client.get("/exports", auth=admin).json["exports"]] == ["central"]
    shown = client.get("/exports/central", auth=admin).json
    assert shown["search"]["camera_ids"] == ["cam-1"] and shown["recent_task_errors"] == []
    changed = client.patch("/exports/central", json={"enabled": False, "password": "new"}, auth=admin)
    assert changed.status_code == 200 and changed.json["enabled"] is False
    assert stored(services).configuration.password == "new"
    assert client.post("/exports/central/retry", auth=admin).json == {"requeued": 0}
    assert client.delete("/exports/central", auth=admin).status_code == 204
    assert client.get("/exports/central", auth=admin).status_code == 404


def test_the_api_never_returns_the_password(client, admin):
    replies = [client.post("/exports", json=new_export(), auth=admin),
               client.get("/exports", auth=admin), client.get("/exports/central", auth=admin),
               client.patch("/exports/central", json={"description": "x"}, auth=admin)]
    for reply in replies:
        assert SECRET not in reply.get_data(as_text=True)
        assert "password" not in (reply.json.get("exports", [reply.json])[0])


def test_the_api_needs_the_camera_admin_role(client, make_user):
    importer = make_user("node", "import")
    assert client.get("/exports").status_code == 401
    assert client.get("/exports", auth=importer).status_code == 403
    assert client.post("/exports", json=new_export(), auth=importer).status_code == 403


@pytest.mark.parametrize("body, field", [
    (b"{not json", None),
    (b"[1, 2]", None),
    (b'{"name": "x"}', "type"),
])
def test_bodies_that_are_not_a_configuration_are_400(client, admin, body, field):
    reply = client.post("/exports", data=body, content_type="application/json", auth=admin)
    assert reply.status_code == 400 and reply.json["message"]
    assert reply.json.get("field") == field


@pytest.mark.parametrize("changes, field", [
    ({"target_url": "gopher://central.example.org/import"}, "target_url"),
    ({"search": {"lat_min": -91}}, "search.lat_min"),
    ({"name": "has/slash"}, "name"),
    ({"enabled": "yes"}, "enabled"),
    ({"config_id": "not-a-uuid"}, "config_id"),
    ({"type": "camera"}, "type"),
])
def test_bad_configurations_are_400_naming_the_field(client, admin, changes, field):
    reply = client.post("/exports", json=new_export(**changes), auth=admin)
    assert reply.status_code == 400 and reply.json["message"]
    assert reply.json["field"] == field


def test_a_duplicate_name_is_a_conflict(client, admin):
    assert client.post("/exports", json=new_export(), auth=admin).status_code == 201
    reply = client.post("/exports", json=new_export(), auth=admin)
    assert reply.status_code == 409 and "already exists" in reply.json["message"]


def test_a_taken_config_id_is_a_conflict(client, admin):
    """Found by the OpenAPI fuzzer: the client chooses config_id, and a taken one under
    another name was a 500 (the database's primary key refused it)."""
    config_id = "0" * 32
    assert client.post("/exports", json=new_export(config_id=config_id), auth=admin).status_code == 201
    reply = client.post("/exports", json=new_export(name="another", config_id=config_id), auth=admin)
    assert reply.status_code == 409
    assert config_id in reply.json["message"] and reply.json["error"] == "conflict"
    assert [export["name"] for export in client.get("/exports", auth=admin).json["exports"]] == ["central"]


@pytest.mark.parametrize("changes, field", [
    ({"name": "renamed"}, "name"),
    ({"enabled": "no"}, "enabled"),
    ({"password": 7}, "password"),
    ({"target_url": "https://u:p@x.example.org/import"}, "target_url"),
])
def test_bad_changes_are_clear_4xx(client, admin, changes, field):
    client.post("/exports", json=new_export(), auth=admin)
    reply = client.patch("/exports/central", json=changes, auth=admin)
    assert reply.status_code == 400 and reply.json["field"] == field


def test_unknown_configurations_are_404(client, admin):
    for method, path in (("get", "/exports/nope"), ("patch", "/exports/nope"),
                         ("delete", "/exports/nope"), ("post", "/exports/nope/retry")):
        reply = getattr(client, method)(path, json={}, auth=admin)
        assert reply.status_code == 404 and "nope" in reply.json["message"]


# Logs ----------------------------------------------------------------------------------------

def test_the_exporter_never_logs_the_password(client, admin, services, live_server, caplog):
    from meteorpi_server.exporter.runner import Exporter, ExporterSettings

    client.post("/exports", json=new_export(target_url=f"{live_server}/import"), auth=admin)
    caplog.set_level(logging.DEBUG)
    Exporter(services.database, services.files, ExporterSettings()).run_once()
    assert "central" in caplog.text
    assert SECRET not in caplog.text


def test_export_add_takes_events_or_files_not_both(config_file, services):
    for flags in (["--events", "--files"], ["--files", "--events"]):
        result = add(config_file, "central", *flags)
        assert result.exit_code == 2, result.output
        assert "--events and --files exclude each other" in result.output
    with services.database.read() as session:
        assert configs.list_views(session) == []


# export run --once: what it says, and its exit status, when a target is in trouble --------

def run_once(config_file):
    return meteorpi(config_file, "export", "run", "--once")


@pytest.fixture
def node_config(tmp_path, database_url):
    """A node whose exporter backs off for ten minutes and gives up after two failures."""
    path = tmp_path / "node.yaml"
    path.write_text(yaml.safe_dump({"database_url": database_url,
                                    "file_store": str(tmp_path / "files"),
                                    "export_backoff_seconds": 600, "export_max_failures": 2}))
    return path


def test_a_target_that_is_down_says_what_to_do_and_fails_every_run_until_fixed(
        node_config, services, caplog):
    from conftest import free_port

    port = free_port()
    assert add(node_config, "central", "--events",
               target=f"http://127.0.0.1:{port}/import").exit_code == 0
    first = run_once(node_config)
    assert first.exit_code == 1, first.output
    down = f"cannot connect to 127.0.0.1:{port}: connection refused; is the target server running?"
    assert down in first.output
    for noise in ("HTTPConnectionPool", "Max retries", "NewConnectionError", "Retrying"):
        assert noise not in first.output
    assert not [record for record in caplog.records
                if record.levelno >= logging.WARNING and "Retrying" in record.getMessage()], \
        "urllib3's retry warnings are for debug logs"
    assert "central is backing off after 1 failure(s) in a row; next attempt " in first.output
    assert "(in 10 min); to try now: meteorpi export retry central" in first.output

    # While it backs off, cron still hears about it.
    waiting = run_once(node_config)
    assert waiting.exit_code == 1, waiting.output
    assert "skipped: backing off" in waiting.output
    assert f"central is backing off after 1 failure(s) in a row (last error: {down})" in waiting.output

    # retry ends the wait; a target that is down is waited for, however often it fails.
    for failures in (2, 3):
        assert meteorpi(node_config, "export", "retry", "central").exit_code == 0
        again = run_once(node_config)
        assert again.exit_code == 1, again.output
        assert f"central is backing off after {failures} failure(s) in a row" in again.output
        assert "disabled" not in again.output


def test_a_target_refusing_the_credentials_is_disabled_with_what_to_do(node_config, services,
                                                                        live_server):
    assert add(node_config, "central", "--events",
               target=f"{live_server}/import").exit_code == 0
    first = run_once(node_config)
    assert first.exit_code == 1, first.output
    assert "central is backing off after 1 failure(s) in a row" in first.output
    assert meteorpi(node_config, "export", "retry", "central").exit_code == 0
    disabled = run_once(node_config)
    assert disabled.exit_code == 1, disabled.output
    assert "central is disabled (disabled after 2 failures in a row; the last: " in disabled.output
    assert "answered 401" in disabled.output
    assert "check the configuration's user and password" in disabled.output
    assert "once that is fixed: meteorpi export enable central" in disabled.output

    after = run_once(node_config)
    assert after.exit_code == 1, after.output
    assert after.output.startswith("nothing to do: no enabled export configuration (central "
                                   "disabled; meteorpi export enable NAME enables one again)")
    assert "meteorpi export enable central" in after.output


def test_a_configuration_an_administrator_disabled_is_nothing_to_worry_about(config_file):
    assert add(config_file, "central", "--events", "--disabled").exit_code == 0
    result = run_once(config_file)
    assert result.exit_code == 0, result.output
    assert result.output == ("nothing to do: no enabled export configuration (central disabled; "
                             "meteorpi export enable NAME enables one again)\n")


def test_the_password_stays_out_of_reprs(config_file, services):
    # A configuration or its view may end up in a log line, a traceback or a debugger.
    assert add(config_file, "central", "--events").exit_code == 0
    view = stored(services)
    assert view.configuration.password == SECRET
    assert SECRET not in repr(view.configuration) and SECRET not in str(view.configuration)
    assert SECRET not in repr(view)
    assert "user_id='node-7'" in repr(view.configuration)


# export edit ---------------------------------------------------------------------------------

NOV_20 = 1795212000000  # 2026-11-20T22:00:00Z


def configuration_dict(services, name="central"):
    return stored(services, name).configuration.to_dict(include_password=True)


@pytest.mark.parametrize("options, stdin, changed", [
    (["--target", "https://other.example.org/import"], None,
     {"target_url": "https://other.example.org/import"}),
    (["--user", "node-8"], None, {"user_id": "node-8"}),
    (["--password-stdin"], "a new password\n", {"password": "a new password"}),
    (["--after", "2026-11-20T22:00:00Z"], None, {"search": {"after": NOV_20}}),
    (["--camera", "cam-2", "--camera", "cam-3"], None, {"search": {"camera_ids": ["cam-2", "cam-3"]}}),
    (["--event-type", "meteorpi:meteor"], None, {"search": {"event_type": "meteorpi:meteor"}}),
], ids=["target", "user", "password", "after", "camera", "event-type"])
def test_export_edit_changes_what_its_options_name_and_nothing_else(config_file, services, options,
                                                                     stdin, changed):
    assert add(config_file, "central", "--events", "--camera", "cam-1",
               "--before", "2026-12-01").exit_code == 0
    before = configuration_dict(services)
    result = meteorpi(config_file, "export", "edit", "central", *options, input=stdin)
    assert result.exit_code == 0, result.output
    assert result.output.startswith("changed export central: ")
    expected = dict(before)
    for field, value in changed.items():
        expected[field] = {**before["search"], **value} if field == "search" else value
    assert configuration_dict(services) == expected
    assert "a new password" not in result.output


def test_export_edit_of_a_wrong_password_makes_the_next_run_try_at_once(config_file, services):
    assert add(config_file, "central", "--events").exit_code == 0
    with services.database.write() as session:
        row = configs.get_row(session, "central")
        row.consecutive_failures, row.next_attempt_at = 2, 2 ** 50
    assert meteorpi(config_file, "export", "edit", "central", "--password-stdin",
                    input="the right one\n").exit_code == 0
    assert stored(services).next_attempt_at == 0


@pytest.mark.parametrize("options, message", [
    (["--target", "ftp://c.example.org/import"], "target_url: must be an http:// or https:// URL"),
    (["--target", "https://node:pw@c.example.org/import"], "must not contain a user or password"),
    (["--mime-type", "image/png"], "--mime-type selects files"),
    (["--camera", ""], "camera_ids[0]"),
    (["--after", "last tuesday"], "ISO 8601"),
    (["--search", "{not json"], "not valid JSON"),
    (["--search", '{"lat_min": 100}'], "search.lat_min: must be between -90 and 90"),
    (["--lat-min", "100"], "search.lat_min: must be between -90 and 90"),
    ([], "say what to change"),
])
def test_bad_export_edit_is_refused_as_export_add_refuses_it_and_changes_nothing(
        config_file, services, options, message):
    assert add(config_file, "central", "--events").exit_code == 0
    before = configuration_dict(services)
    result = meteorpi(config_file, "export", "edit", "central", *options)
    assert result.exit_code != 0
    assert message in result.output
    assert configuration_dict(services) == before


def test_export_edit_of_a_files_configuration_refuses_event_options(config_file, services):
    assert add(config_file, "frames", "--files").exit_code == 0
    result = meteorpi(config_file, "export", "edit", "frames", "--event-type", "meteorpi:meteor")
    assert result.exit_code == 2
    assert ("--event-type selects events; it cannot be used with export frames, which exports "
            "stand-alone files") in result.output


def test_export_edit_of_an_unknown_name_is_one_clear_line(config_file):
    result = meteorpi(config_file, "export", "edit", "nope", "--user", "node-8")
    assert result.exit_code == 1
    assert result.output == ("Error: there is no export configuration named 'nope' "
                             "('meteorpi export list' shows them)\n")


def test_export_edit_that_narrows_the_search_drops_the_tasks_it_no_longer_matches(
        config_file, services):
    import datetime

    from sqlalchemy import select

    from meteorpi_server.exporter import marking, tasks
    from meteorpi_server.node.demo import DemoPlan, generate
    from meteorpi_server.node.recording import Recorder
    from meteorpi_server.storage.orm import EventRow

    generate(Recorder(services.database, services.files),
             DemoPlan(cameras=2, nights=1, events_per_night=2, files_per_event=0,
                      standalone_files=0, file_size=100, first_night=datetime.date(2026, 11, 1)))
    assert add(config_file, "central", "--events").exit_code == 0
    with services.database.write() as session:
        row = configs.get_row(session, "central")
        assert marking.mark(session, row) == 4
        camera = session.scalars(select(EventRow.camera_id).limit(1)).one()
    result = meteorpi(config_file, "export", "edit", "central", "--camera", camera)
    assert result.exit_code == 0, result.output
    with services.database.read() as session:
        counts = tasks.counts_by_state(session)[stored(services).config_id]
    assert counts[tasks.PENDING] == 2
