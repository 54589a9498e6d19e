"""`meteorpi serve` as an operator (or systemd) starts it: it listens, or says in one line
why it cannot."""
from __future__ import annotations

import errno
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import requests
import yaml
from click.testing import CliRunner
from conftest import free_port

from meteorpi_server.cli import main
from meteorpi_server.serving import ListenError, listen


def _migrated_config(folder: Path) -> Path:
    config = folder / "server.yaml"
    config.write_text(yaml.safe_dump({"database_url": f"sqlite:///{folder}/meteorpi.db",
                                      "file_store": str(folder / "files"), "workers": 1}))
    upgraded = CliRunner().invoke(main, ["--config", str(config), "db", "upgrade"])
    assert upgraded.exit_code == 0, upgraded.output
    return config


@pytest.fixture
def config(tmp_path) -> Path:
    return _migrated_config(tmp_path)


def serve(config: Path, *args: str, **options) -> subprocess.CompletedProcess:
    """Run `meteorpi serve` expecting it to fail (a timeout here means it served)."""
    return subprocess.run([sys.executable, "-m", "meteorpi_server", "--config", str(config),
                           "serve", *args], capture_output=True, text=True, timeout=60,
                          **options)


def assert_one_line_failure(result: subprocess.CompletedProcess, message: str) -> None:
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert result.stderr.count("\n") == 1, result.stderr
    assert message in result.stderr
    assert "serving on" not in result.stdout
    # The first user's password is shown only for a server that starts.
    assert "Password" not in result.stdout


def test_a_port_in_use_is_one_line_and_no_serving_on(config):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = serve(config, "--port", str(port))
    assert_one_line_failure(result, f"cannot listen on 127.0.0.1:{port}: port {port} is in use")


@pytest.mark.parametrize("port", ["99999", "0", "-1"])
def test_a_port_out_of_range_is_one_line(config, port):
    result = serve(config, "--port", port)
    assert_one_line_failure(result, f"--port {port} is not a TCP port: give one from 1 to 65535")


def test_a_port_out_of_range_in_the_settings_is_one_line(config):
    result = serve(config, env={**os.environ, "METEORPI_PORT": "70000"})
    assert_one_line_failure(result, "METEORPI_PORT: port must be a TCP port, 1 to 65535")


def _bindable(host: str, port: int = 0) -> bool:
    try:
        with socket.socket() as probe:
            probe.bind((host, port))
        return True
    except OSError:
        return False


def test_an_address_this_machine_lacks_is_one_line(config):
    host = "192.0.2.1"  # TEST-NET-1: documentation only, never assigned to a machine
    if _bindable(host):
        pytest.skip(f"this machine has {host}")
    result = serve(config, "--host", host, "--port", str(free_port()))
    assert_one_line_failure(result, f"no network interface of this machine has the address {host}")


def test_a_host_name_that_does_not_resolve_is_one_line(config):
    result = serve(config, "--host", "no-such-host.invalid")
    assert_one_line_failure(result, "'no-such-host.invalid' is not an address or a host name")


def test_a_privileged_port_without_privilege_is_one_line(config):
    if _bindable("127.0.0.1", 80):
        pytest.skip("this user may listen on port 80 (root, or ip_unprivileged_port_start); "
                    "the next test covers the message")
    result = serve(config, "--port", "80")
    assert_one_line_failure(result, "cannot listen on 127.0.0.1:80: permission denied")


def test_listen_explains_permission_denied_in_words(monkeypatch):
    def refuse(self, address):
        raise PermissionError(errno.EACCES, "Permission denied")

    monkeypatch.setattr(socket.socket, "bind", refuse)
    with pytest.raises(ListenError, match="ports below 1024 need root or CAP_NET_BIND_SERVICE"):
        listen("127.0.0.1", 80)


@pytest.mark.slow
def test_serving_on_is_said_once_it_listens(config):
    port = free_port()
    process = subprocess.Popen([sys.executable, "-m", "meteorpi_server", "--config", str(config),
                                "serve", "--port", str(port)], stdout=subprocess.PIPE,
                               stderr=subprocess.DEVNULL, text=True, start_new_session=True)
    try:
        said = []
        for line in process.stdout:
            said.append(line)
            if line.startswith("serving on"):
                break
        assert said and said[-1].startswith(f"serving on http://127.0.0.1:{port} "), said
        # No retrying: by the time it says so, connections are accepted.
        assert requests.get(f"http://127.0.0.1:{port}/health", timeout=30).status_code == 200
        assert sum("serving on" in line for line in said) == 1
    finally:
        os.killpg(process.pid, 9)
        process.wait()
