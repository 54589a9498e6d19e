"""Batched replication loses nothing when either side is killed mid-batch."""
from __future__ import annotations

import json
import signal
import subprocess
import sys
import textwrap
import threading
import time

import factories
import pytest
from conftest import GunicornProcess, free_port
from test_upload_faults import CuttingProxy

from meteorpi_server.exporter.batch import BatchSender, BatchStats
from meteorpi_server.exporter.handshake import ImportClient, TargetError
from meteorpi_server.storage import store
from store_queries import stored_bytes

pytestmark = pytest.mark.slow

EXPORTER_SCRIPT = textwrap.dedent('''
    import json, pathlib, sys, uuid
    from meteorpi_model import CameraStatus, Event, FileRecord
    from meteorpi_server.exporter.batch import BatchSender, BatchStats
    from meteorpi_server.exporter.handshake import ImportClient

    url, user, password, night = sys.argv[1:5]
    night = json.loads(pathlib.Path(night).read_text())
    statuses = {s.status_id: s for s in map(CameraStatus.from_dict, night["statuses"])}
    entities = [Event.from_dict(e) for e in night["events"]] + [FileRecord.from_dict(f) for f in night["files"]]
    root = pathlib.Path(night["root"])

    class Source:
        def status(self, status_id):
            return statuses.get(status_id)

        def open_file(self, record):
            return open(root / record.file_id.hex, "rb")

    with ImportClient(url + "/import", user, password, chunk_size=64 * 1024,
                      upload_retry_seconds=0.05) as client:
        client.describe()
        stats = BatchStats()
        results = BatchSender(client, Source(), concurrency=2).send(
            entities, progress=lambda n: print("sent", n, flush=True), stats=stats)
    print("done", sorted({r.state for r in results.values()}), stats.files_uploaded, flush=True)
''')


def a_night(root) -> factories.DataSet:
    dataset = factories.DataSet(root)
    for camera in range(2):
        owner = factories.status(f"cam-{camera}")
        for index in range(8):
            dataset.add_event(owner, file_count=2, size=200_000, time_ms=owner.valid_from + index)
        dataset.add_file(owner, size=200_000)
    return dataset


def write_night(dataset, path) -> None:
    path.write_text(json.dumps({
        "root": str(dataset.root),
        "statuses": [status.to_dict() for status in dataset.statuses.values()],
        "events": [event.to_dict() for event in dataset.events],
        "files": [record.to_dict() for record in dataset.files]}))


def assert_consistent_and_complete(services, dataset):
    with services.database.read() as session:
        for event in dataset.events:
            assert store.get_event(session, event.event_id) == event
        for record in dataset.files:
            assert store.get_file_record(session, record.file_id) == record
    for file_id, data in dataset.contents.items():
        assert stored_bytes(services.files, file_id) == data


def assert_no_record_without_its_bytes(services, dataset) -> int:
    """Every record stored so far has all its bytes; returns how many are stored."""
    stored = 0
    with services.database.read() as session:
        for event in dataset.events:
            if store.has_event(session, event.event_id):
                stored += 1
                for record in event.files:
                    assert stored_bytes(services.files, record.file_id) == dataset.contents[record.file_id]
    return stored


# Batches of a few entities, so that a kill halfway lands after some batches' records
# were stored and inside another's uploads.
SMALL_BATCHES = {"batch_max_entities": 4}


def test_a_batch_resumes_after_the_exporter_is_killed(gunicorn_server, settings, exporter_auth,
                                                      services, tmp_path):
    settings.update(SMALL_BATCHES)
    server = gunicorn_server(workers=2)
    port = int(server.url.rsplit(":", 1)[1])
    proxy = CuttingProxy(port, [], delay_per_piece=0.001)
    dataset = a_night(tmp_path / "node")
    night = tmp_path / "night.json"
    write_night(dataset, night)
    script = tmp_path / "exporter.py"
    script.write_text(EXPORTER_SCRIPT)
    command = [sys.executable, str(script), f"http://127.0.0.1:{proxy.port}", *exporter_auth, str(night)]
    first = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    sent = 0
    for line in first.stdout:  # kill it halfway through the file bytes
        assert line.startswith("sent "), line
        sent += int(line.split()[1])
        if sent >= sum(map(len, dataset.contents.values())) // 2:
            break
    first.send_signal(signal.SIGKILL)
    first.wait()
    assert 0 < assert_no_record_without_its_bytes(services, dataset) < len(dataset.events)
    second = subprocess.run(command, capture_output=True, text=True, timeout=120)
    proxy.close()
    assert second.returncode == 0, second.stderr
    done = second.stdout.strip().splitlines()[-1].split(maxsplit=1)[1]
    states, uploaded = done.rsplit(" ", 1)
    assert states == "['complete']"
    assert int(uploaded) < len(dataset.contents)  # what the first run finished was not sent again
    assert_consistent_and_complete(services, dataset)


def test_a_batch_completes_after_the_server_is_killed_and_restarted(settings, app, exporter_auth,
                                                                    services, tmp_path):
    import yaml

    config = tmp_path / "server.yaml"
    config.write_text(yaml.safe_dump({**settings, **SMALL_BATCHES, "log_level": "warning"}))
    port = free_port()
    server = GunicornProcess(config, port, workers=2)
    proxy = CuttingProxy(port, [], delay_per_piece=0.001)
    dataset = a_night(tmp_path / "node")
    entities = dataset.events + dataset.files
    total = sum(map(len, dataset.contents.values()))
    outcome = {}

    def replicate():
        try:
            with ImportClient(f"http://127.0.0.1:{proxy.port}/import", *exporter_auth,
                              chunk_size=64 * 1024, upload_retry_seconds=0.05) as client:
                client.describe()
                outcome["results"] = BatchSender(client, dataset, concurrency=2).send(entities)
        except TargetError as error:
            outcome["error"] = error

    thread = threading.Thread(target=replicate)
    thread.start()
    while proxy.forwarded < total // 2:
        time.sleep(0.01)
    server.kill()
    thread.join(120)
    assert 0 < assert_no_record_without_its_bytes(services, dataset) < len(dataset.events)
    server = GunicornProcess(config, port, workers=2)
    try:
        with ImportClient(f"http://127.0.0.1:{proxy.port}/import", *exporter_auth,
                          upload_retry_seconds=0.05) as client:
            client.describe()
            stats = BatchStats()
            results = BatchSender(client, dataset).send(entities, stats=stats)
    finally:
        server.stop()
        proxy.close()
    assert {result.state for result in results.values()} == {"complete"}
    assert_consistent_and_complete(services, dataset)
