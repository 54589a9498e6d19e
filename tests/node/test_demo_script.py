"""`make run` and `make demo` as a user runs them: what they print is true."""
from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import requests

from conftest import free_port

ROOT = Path(__file__).parents[2]
BIN = Path(sys.executable).parent


def make_dry_run(*arguments: str) -> str:
    environment = {key: value for key, value in os.environ.items()
                   if key not in ("HOST", "PORT", "WORKERS")}
    result = subprocess.run(["make", "-n", "-s", "-C", str(ROOT), *arguments,
                             f"BIN={BIN}"], capture_output=True, text=True, timeout=60,
                            env={**environment, "HOST": "0.0.0.0", "PORT": "1"})
    assert result.returncode == 0, result.stderr
    return next(line for line in result.stdout.splitlines() if " serve" in line)


@pytest.mark.skipif(shutil.which("make") is None, reason="needs make")
def test_make_run_leaves_host_port_and_workers_to_the_configuration():
    # HOST and PORT in the environment (as some shells and platforms export) are not used.
    assert make_dry_run("run").split()[1:] == ["serve"]


@pytest.mark.skipif(shutil.which("make") is None, reason="needs make")
def test_make_run_passes_what_is_given_on_its_command_line():
    assert make_dry_run("run", "HOST=0.0.0.0", "PORT=8080", "WORKERS=4").split()[1:] == [
        "serve", "--host", "0.0.0.0", "--port", "8080", "--workers", "4"]
    assert make_dry_run("run", "PORT=9000").split()[1:] == ["serve", "--port", "9000"]


@pytest.mark.slow
@pytest.mark.skipif(not (BIN / "meteorpi").exists(), reason="needs the installed command")
def test_demo_without_a_terminal_says_its_servers_stopped_and_demo_serve_restarts_them(tmp_path):
    node_port, central_port = free_port(), free_port()
    environment = {**os.environ, "BIN": str(BIN), "DEMO_DIR": str(tmp_path),
                   "NODE_PORT": str(node_port), "CENTRAL_PORT": str(central_port),
                   "DEMO_DATA_ARGS": "--cameras 1 --nights 1 --events-per-night 2 "
                                     "--files-per-event 1 --standalone-files 1 --file-size 2KiB"}
    demo = subprocess.run(["bash", str(ROOT / "scripts" / "demo.sh")], env=environment,
                          stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=300)
    assert demo.returncode == 0, demo.stdout + demo.stderr
    assert "The servers have stopped" in demo.stdout
    assert "camera nights  [" not in demo.stdout + demo.stderr, "no progress bar in a log"
    with pytest.raises(requests.ConnectionError):
        requests.get(f"http://127.0.0.1:{central_port}/health", timeout=5)
    restart = re.search(r"make demo-serve DEMO_RUN=(\S+)", demo.stdout)
    login = re.search(r"curl -u (\w+):(\S+) (http://\S+/cameras)", demo.stdout)
    assert restart and login

    serving = subprocess.Popen(["bash", str(ROOT / "scripts" / "demo.sh"), "serve", restart[1]],
                               env=environment, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        lines = []
        for line in serving.stdout:
            lines.append(line)
            if "until you press Ctrl-C" in line:
                break
        assert any("served again" in line for line in lines), "".join(lines)
        cameras = requests.get(login[3], auth=(login[1], login[2]), timeout=10)
        assert cameras.status_code == 200
        assert [camera["camera_id"] for camera in cameras.json()["cameras"]] == ["demo-cam-1"]
    finally:
        os.killpg(serving.pid, signal.SIGTERM)
        serving.wait(60)
    with pytest.raises(requests.ConnectionError):
        requests.get(f"http://127.0.0.1:{node_port}/health", timeout=5)
