"""``meteorpi export run --once --quiet`` from cron: nothing on standard output when all
is well; what went wrong on standard error, and exit status 1, when not."""
from __future__ import annotations

import datetime

import pytest
import yaml
from click.testing import CliRunner
from conftest import free_port
from export_nodes import (  # noqa: F401
    add_export,
    extra_postgres_databases,
    make_node,
    node_database,
    record_ids,
    status_of,
)

from meteorpi_server.cli import main
from meteorpi_server.node.demo import DemoPlan, generate

NIGHT = DemoPlan(cameras=1, nights=1, events_per_night=2, files_per_event=1, standalone_files=0,
                 file_size=500, first_night=datetime.date(2026, 11, 1))


@pytest.fixture
def source(make_node, tmp_path):
    """A node with a night of data, and its configuration file."""
    node = make_node("source")
    generate(node.recorder, NIGHT)
    node.config_file = tmp_path / "node.yaml"
    node.config_file.write_text(yaml.safe_dump({
        "database_url": node.settings["database_url"], "file_store": node.settings["file_store"],
        "export_backoff_seconds": 600}))
    return node


def run_quietly(node, flag="--quiet"):
    return CliRunner().invoke(main, ["--config", str(node.config_file), "export", "run", "--once",
                                     flag], catch_exceptions=False)


@pytest.mark.parametrize("flag", ["--quiet", "-q"])
def test_a_quiet_run_that_sends_everything_prints_nothing(source, make_node, flag):
    target = make_node("central", 0).serve()
    add_export(source, target.import_url)
    result = run_quietly(source, flag)
    assert result.exit_code == 0, result.output
    assert (result.stdout, result.stderr) == ("", "")
    assert record_ids(target)["events"] == record_ids(source)["events"]
    assert status_of(source).done == NIGHT.events_per_night


def test_a_quiet_run_with_nothing_to_send_prints_nothing(source, make_node):
    target = make_node("central", 0).serve()
    add_export(source, target.import_url)
    assert run_quietly(source).exit_code == 0
    again = run_quietly(source)
    assert again.exit_code == 0, again.output
    assert (again.stdout, again.stderr) == ("", "")


def test_a_quiet_run_against_a_target_that_is_down_says_so_on_stderr_and_fails(source):
    port = free_port()
    add_export(source, f"http://127.0.0.1:{port}/import")
    result = run_quietly(source)
    assert result.exit_code == 1
    assert result.stdout == ""
    assert f"cannot connect to 127.0.0.1:{port}: connection refused" in result.stderr
    assert "central is backing off after 1 failure(s) in a row" in result.stderr
