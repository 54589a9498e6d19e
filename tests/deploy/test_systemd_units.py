"""The systemd units in deploy/ pass ``systemd-analyze verify`` and fit the example config."""
from __future__ import annotations

import configparser
import subprocess
import sys
from pathlib import Path

import pytest
from deploy_tools import DEPLOY, require_tool

from meteorpi_server.config import load_config

UNITS = ["meteorpi.service", "meteorpi-export.service", "meteorpi-gc.service", "meteorpi-gc.timer"]
INSTALLED_METEORPI = "/opt/meteorpi/venv/bin/meteorpi"


def _read_unit(name: str) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str
    parser.read(DEPLOY / name)
    return parser


@pytest.fixture
def units_with_this_venv(tmp_path) -> Path:
    """The units in a temporary directory, running this venv's meteorpi (verify checks that
    ExecStart's program exists, and /opt/meteorpi is not installed here)."""
    here = Path(sys.executable).parent / "meteorpi"
    assert here.exists(), here
    for name in UNITS:
        text = (DEPLOY / name).read_text()
        if name.endswith(".service"):
            assert INSTALLED_METEORPI in text, name
        (tmp_path / name).write_text(text.replace(INSTALLED_METEORPI, str(here)))
    return tmp_path


def test_the_units_pass_systemd_analyze_verify(units_with_this_venv):
    systemd_analyze = require_tool("systemd-analyze", "systemd")
    result = subprocess.run([systemd_analyze, "verify", *UNITS], cwd=units_with_this_venv, check=False,
                            capture_output=True, text=True, timeout=60)
    # verify only warns (exit status 0) about unknown keys and unparsable values: those
    # lines name the unit, and count as failures here.
    complaints = [line for line in (result.stdout + result.stderr).splitlines()
                  if "meteorpi" in line]
    assert result.returncode == 0 and not complaints, result.stdout + result.stderr


@pytest.mark.parametrize("name", [name for name in UNITS if name.endswith(".service")])
def test_each_service_runs_as_meteorpi_with_the_config_file_and_may_write_its_state(name):
    service = _read_unit(name)["Service"]
    assert service["User"] == "meteorpi"
    assert service["Environment"] == "METEORPI_CONFIG=/etc/meteorpi/meteorpi.yaml"
    assert service["ExecStart"].startswith(INSTALLED_METEORPI + " ")
    # ProtectSystem=strict leaves only the StateDirectory (/var/lib/meteorpi) writable.
    assert service["ProtectSystem"] == "strict"
    assert service["StateDirectory"] == "meteorpi"
    assert service["WorkingDirectory"] == "/var/lib/meteorpi"


def test_the_long_running_services_restart_on_failure():
    assert _read_unit("meteorpi.service")["Service"]["ExecStart"].endswith(" serve")
    assert _read_unit("meteorpi-export.service")["Service"]["ExecStart"].endswith(" export run")
    for name in ("meteorpi.service", "meteorpi-export.service"):
        assert _read_unit(name)["Service"]["Restart"] == "on-failure"


def test_the_gc_timer_starts_the_gc_service_daily():
    assert _read_unit("meteorpi-gc.timer")["Timer"]["OnCalendar"] == "daily"
    assert _read_unit("meteorpi-gc.service")["Service"]["ExecStart"].endswith(" files gc --quiet")


def test_the_example_config_keeps_its_data_in_the_state_directory():
    config = load_config(DEPLOY / "meteorpi.yaml", environ={})
    assert config.database_url == "sqlite:////var/lib/meteorpi/meteorpi.db"
    assert config.file_store.startswith("/var/lib/meteorpi/")
    assert (config.host, config.port) == ("127.0.0.1", 8000)  # where the nginx site points
