"""/metrics under ``meteorpi serve`` with two workers: one scrape sums them all.

Each gunicorn worker counts in its own files (prometheus_client's multiprocess mode);
whichever worker answers a scrape reads every worker's files.
"""
from __future__ import annotations

import datetime
import os
import signal
import time
import uuid
from pathlib import Path

import pytest
import requests
from export_nodes import (  # noqa: F401
    EXPORT_USER,
    add_export,
    extra_postgres_databases,
    make_node,
    node_database,
    record_ids,
)
import factories
from conftest import PASSWORD
from prometheus_client.multiprocess import MultiProcessCollector
from scrapes import Scrape

from meteorpi_model import EventSearch, ExportConfiguration
from meteorpi_server.exporter import configs
from meteorpi_server.node.demo import DemoPlan, generate

pytestmark = pytest.mark.slow

PLAN = DemoPlan(cameras=2, nights=1, events_per_night=3, files_per_event=2, standalone_files=0,
                file_size=1500, first_night=datetime.date(2026, 11, 1))


@pytest.fixture
def metrics_dir(tmp_path, monkeypatch) -> Path:
    """Where the served workers count: ``meteorpi serve`` uses $PROMETHEUS_MULTIPROC_DIR
    when it is set (the test process's own metrics are not in multiprocess mode)."""
    path = tmp_path / "metrics"
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(path))
    return path


def worker_files(directory: Path, prefix: str = "counter") -> dict[int, Path]:
    return {int(path.stem.rsplit("_", 1)[1]): path for path in directory.glob(f"{prefix}_*.db")}


def imports_counted(path: Path) -> float:
    """The import results one worker counted, read from its file alone."""
    return sum(sample.value for metric in MultiProcessCollector.merge([str(path)])
               for sample in metric.samples if sample.name == "meteorpi_import_results_total")


def scrape(server) -> Scrape:
    response = requests.get(f"{server.url}/metrics", timeout=10)
    assert response.status_code == 200
    return Scrape(response.text)


def test_one_scrape_sums_the_import_counters_of_every_worker(
        metrics_dir, gunicorn_server, make_user, make_node, services):
    make_user(EXPORT_USER, "import")
    central = gunicorn_server(workers=2)
    # An onward export from the central server (to nowhere) has gauges of its own.
    with services.database.write() as session:
        configs.add(session, ExportConfiguration(
            config_id=uuid.uuid4(), name="onward", target_url="http://127.0.0.1:9/import",
            user_id=EXPORT_USER, password=PASSWORD, search=EventSearch()))
    source = make_node("source", 0)
    generate(source.recorder, PLAN)
    add_export(source, f"{central.url}/import")

    summary = source.exporter().run_once()
    assert summary.targets["central"].failures == 0
    # The exporter keeps its connections alive, so it may have talked to one worker only:
    # more imports, each on a new connection, until both workers have counted some.
    status = {"type": "status", "status": factories.status("cam-extra").to_dict()}
    extra = 0
    while len([pid for pid, path in worker_files(metrics_dir).items()
               if imports_counted(path)]) < 2:
        assert extra < 500, "one worker answered every request"
        response = requests.post(f"{central.url}/import", json=status, timeout=10,
                                 auth=(EXPORT_USER, PASSWORD),
                                 headers={"Connection": "close"})
        assert response.status_code == 200
        extra += 1

    found = scrape(central)
    per_worker = [imports_counted(path) for path in worker_files(metrics_dir).values()]
    assert len(per_worker) == 2 and all(per_worker)
    assert found.value("meteorpi_import_results_total") == sum(per_worker)
    assert found.value("meteorpi_import_results_total", protocol="legacy-1",
                       request="entity") >= extra
    files = len(record_ids(source)["events"]) * PLAN.files_per_event
    assert found.value("meteorpi_files_stored_total") == files
    assert found.value("meteorpi_received_bytes_total") == files * PLAN.file_size
    assert found.value("meteorpi_export_state", config="onward", state="idle") == 1
    assert found.labels("meteorpi_export_backlog", "config") == {"onward"}


def test_a_dead_worker_stops_counting_as_open_but_keeps_its_totals(
        metrics_dir, gunicorn_server, make_user):
    reader = make_user("reader", "user")
    server = gunicorn_server(workers=2)
    # A long poll in each worker makes its live gauge file.
    for attempt in range(500):
        if len(worker_files(metrics_dir, "gauge_livesum")) == 2:
            break
        response = requests.get(f"{server.url}/changes", params={"timeout": 1}, auth=reader,
                                timeout=10, headers={"Connection": "close"})
        assert response.status_code == 200
    else:
        pytest.fail("no live gauge files: is multiprocess mode on?")
    before = scrape(server).value("meteorpi_http_requests_total")
    victim = next(iter(worker_files(metrics_dir, "gauge_livesum")))
    os.kill(victim, signal.SIGKILL)

    deadline = time.monotonic() + 30
    while victim in worker_files(metrics_dir, "gauge_livesum"):
        assert time.monotonic() < deadline, "the dead worker's live gauges were not removed"
        time.sleep(0.1)
    assert scrape(server).value("meteorpi_http_requests_total") >= before


def test_serve_starts_from_an_empty_metrics_directory_and_clears_it_on_stop(
        metrics_dir, gunicorn_server):
    metrics_dir.mkdir()
    stale = metrics_dir / "counter_999999.db"
    stale.write_bytes(b"left by an earlier run")
    server = gunicorn_server(workers=1)
    assert not stale.exists()
    assert scrape(server).value("meteorpi_http_requests_total") >= 0
    server.stop()
    assert not list(metrics_dir.glob("*.db"))
