"""deploy/nginx/meteorpi.conf: nginx accepts it, it is no stricter than the server's
limits, and a node replicates to a meteorpi server through it over HTTPS."""
from __future__ import annotations

import datetime
import os
import re
import socket
import subprocess
import time
from pathlib import Path

import pytest
import requests
import trustme
from deploy_tools import DEPLOY, require_tool
from export_nodes import (  # noqa: F401
    add_export,
    assert_same_records,
    extra_postgres_databases,
    make_node,
    node_database,
)

from meteorpi_server.config import default
from meteorpi_server.node.demo import DemoPlan, generate

SITE = DEPLOY / "nginx" / "meteorpi.conf"
MiB = 1024 ** 2
# Small files (bundles in protocol v2) and files larger than a bundle takes, which go by
# resumable upload in chunks.
SMALL = DemoPlan(cameras=1, nights=1, events_per_night=3, files_per_event=2, standalone_files=0,
                 file_size=3000, first_night=datetime.date(2026, 11, 1))
LARGE = DemoPlan(cameras=1, nights=1, events_per_night=1, files_per_event=2, standalone_files=0,
                 file_size=int(1.5 * MiB), first_night=datetime.date(2026, 11, 3))


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _replace_once(text: str, old: str, new: str) -> str:
    assert text.count(old) == 1, f"the site no longer has exactly one {old!r}"
    return text.replace(old, new)


def render(directory: Path, upstream_port: int, https_port: int, http_port: int,
           certificate: str, key: str) -> Path:
    """The site, with test ports and certificate, in an nginx.conf of its own whose pid,
    logs and temporary files stay in ``directory``; returns the nginx.conf."""
    site = SITE.read_text()
    site = _replace_once(site, "server 127.0.0.1:8000;", f"server 127.0.0.1:{upstream_port};")
    site = _replace_once(site, "listen 443 ssl;", f"listen 127.0.0.1:{https_port} ssl;")
    site = _replace_once(site, "listen 80;", f"listen 127.0.0.1:{http_port};")
    # The test host may have no IPv6.
    site = _replace_once(site, "listen [::]:443 ssl;", "")
    site = _replace_once(site, "listen [::]:80;", "")
    site = _replace_once(site, "/etc/letsencrypt/live/meteorpi.example.org/fullchain.pem",
                         certificate)
    site = _replace_once(site, "/etc/letsencrypt/live/meteorpi.example.org/privkey.pem", key)
    (directory / "meteorpi.conf").write_text(site)
    temp = "\n".join(f"    {kind}_temp_path {directory / kind};"
                     for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
    # Workers started by root would run as nobody, who may not enter this directory.
    user = "user root;\n" if os.geteuid() == 0 else ""
    conf = directory / "nginx.conf"
    conf.write_text(f"""{user}worker_processes 1;
pid {directory / 'nginx.pid'};
error_log {directory / 'error.log'} warn;
events {{
    worker_connections 256;
}}
http {{
    access_log {directory / 'access.log'};
{temp}
    include {directory / 'meteorpi.conf'};
}}
""")
    return conf


def _nginx_command(nginx: str, conf: Path, *args: str) -> list[str]:
    return [nginx, "-p", str(conf.parent), "-e", str(conf.parent / "error.log"),
            "-c", str(conf), *args]


@pytest.fixture
def certificate(tmp_path):
    """A trustme CA (its PEM file) and a certificate for 127.0.0.1 that it signed."""
    ca = trustme.CA()
    issued = ca.issue_cert("127.0.0.1")
    paths = {name: str(tmp_path / f"{name}.pem") for name in ("ca", "fullchain", "privkey")}
    ca.cert_pem.write_to_path(paths["ca"])
    for index, blob in enumerate(issued.cert_chain_pems):
        blob.write_to_path(paths["fullchain"], append=index > 0)
    issued.private_key_pem.write_to_path(paths["privkey"])
    return paths


def _server_block_limits() -> dict[str, int]:
    """client_max_body_size in bytes: per location, and for the server (key ``server``)."""
    text = SITE.read_text()
    https = text[text.index("listen 443 ssl;"):]
    limits = {}
    for location, body in re.findall(r"location (\S+) \{(.*?)\}", https, re.DOTALL):
        match = re.search(r"client_max_body_size (\d+)m;", body)
        if match:
            limits[location] = int(match[1]) * MiB
    outside = re.sub(r"location \S+ \{.*?\}", "", https, flags=re.DOTALL)
    limits["server"] = int(re.search(r"client_max_body_size (\d+)m;", outside)[1]) * MiB
    return limits


def test_nginx_accepts_the_site(tmp_path, certificate):
    nginx = require_tool("nginx", "nginx")
    conf = render(tmp_path, _free_port(), _free_port(), _free_port(),
                  certificate["fullchain"], certificate["privkey"])
    result = subprocess.run(_nginx_command(nginx, conf, "-t"), capture_output=True, text=True,
                            timeout=30, check=False)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "[warn]" not in output and "[emerg]" not in output, output


def test_the_sites_body_limits_are_no_stricter_than_the_servers_defaults():
    limits = _server_block_limits()
    assert limits["/import/data/"] >= max(default("max_upload_bytes"), default("max_chunk_bytes"))
    assert limits["/import/batch/"] >= max(default("batch_max_bundle_bytes"),
                                           default("max_json_bytes"))
    assert limits["server"] >= default("max_json_bytes")


def test_uploads_stream_through_and_the_feeds_are_neither_buffered_nor_cut():
    text = SITE.read_text()
    blocks = dict(re.findall(r"location (\S+) \{(.*?)\}", text, re.DOTALL))
    for route in ("/import/data/", "/import/batch/"):
        assert "proxy_request_buffering off;" in blocks[route]
    for route in ("/changes", "/status/stream"):
        feed = blocks[route]
        assert "proxy_buffering off;" in feed
        read_timeout = int(re.search(r"proxy_read_timeout (\d+)s;", feed)[1])
        assert read_timeout > max(default("feed_max_wait_seconds"),
                                  default("feed_heartbeat_seconds"))


class _Nginx:
    """nginx in the foreground with a rendered configuration, until stop()."""

    def __init__(self, nginx: str, conf: Path, port: int):
        self.conf, self.port = conf, port
        self.process = subprocess.Popen(_nginx_command(nginx, conf, "-g", "daemon off;"),
                                        stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                return
            except OSError:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    pytest.fail(f"nginx did not start: {self.log()}")
                time.sleep(0.05)

    def log(self) -> str:
        error_log = self.conf.parent / "error.log"
        return error_log.read_text() if error_log.exists() else ""

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        self.process.stdout.close()


@pytest.mark.slow
@pytest.mark.parametrize("batch_protocol", [True, False], ids=["v2", "legacy"])
def test_a_node_replicates_through_the_site_over_https(tmp_path, make_node, certificate,
                                                       batch_protocol):
    nginx = require_tool("nginx", "nginx")
    central = make_node("central", 0, batch_protocol=batch_protocol, read_access="public").serve()
    https_port = _free_port()
    nginx_dir = tmp_path / "nginx"
    nginx_dir.mkdir()
    conf = render(nginx_dir, central.port, https_port, _free_port(),
                  certificate["fullchain"], certificate["privkey"])
    proxy = _Nginx(nginx, conf, https_port)
    try:
        source = make_node("source")
        generate(source.recorder, SMALL)
        generate(source.recorder, LARGE)
        site = f"https://127.0.0.1:{https_port}"
        add_export(source, f"{site}/import")

        # Chunks smaller than the large files, so those take several PATCH requests.
        summary = source.exporter(ca_bundle=certificate["ca"],
                                  chunk_bytes=MiB // 2).run_once().targets["central"]

        assert (summary.failures, summary.last_error) == (0, None), proxy.log()
        assert summary.files_uploaded == (SMALL.events_per_night * SMALL.files_per_event
                                          + LARGE.events_per_night * LARGE.files_per_event)
        assert_same_records(source, central)

        # The change feed through the proxy: a long poll, and the event stream's first change.
        poll = requests.get(f"{site}/changes", params={"timeout": 100}, verify=certificate["ca"],
                            timeout=10)
        assert poll.status_code == 200 and poll.json()["changes"]
        with requests.get(f"{site}/changes/stream", stream=True, verify=certificate["ca"],
                          timeout=10) as stream:
            assert stream.headers["Content-Type"].startswith("text/event-stream")
            lines = stream.iter_lines(decode_unicode=True)
            assert any(line == "event: change" for line in lines)
        accessed = (nginx_dir / "access.log").read_text()
        assert ("/import/batch/" in accessed) == batch_protocol
        assert "/import/data/" in accessed
    finally:
        proxy.stop()
