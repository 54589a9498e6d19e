"""Benchmark of the exporter: a synthetic night replicated to a real ``meteorpi serve``.

Run:  .venv/bin/python bench/export.py [--quick] [--database sqlite|postgresql|both]

For each database, two fresh ones are made, a camera node's and a central server's (SQLite
files in a temporary directory, or uniquely named PostgreSQL databases created through
the ``test`` database and dropped at the end). The central server runs as ``meteorpi
serve --workers 2`` on a free loopback port with an ``import`` user. The node is this
process: its records are written by ``meteorpi demo-data``'s generator (the Recorder, as
a camera writes them), and the exporter runs in this process too, so nothing but the
export is timed.

Each repetition records two new nights on the node, and sends

exporter
    one night with the export runner (``Exporter.run_once``, as ``meteorpi export run
    --once`` does): describe the target, mark the night's tasks (one INSERT ... SELECT),
    send them in batches with protocol v2, which this target offers (plan, statuses,
    bundles of files, records), and commit each batch's outcomes. Two configurations,
    the night's events and its stand-alone files, run in parallel as they would in
    production.
baseline
    the other night with the bare legacy handshake driver: one ``ImportClient`` (after
    ``describe()``, so files go by resumable upload) and ``export_entity`` for each
    entity in turn, events then stand-alone files, with no tasks, marking or commits:
    what the exporter did before it spoke v2, less its bookkeeping.

entities/s counts events and stand-alone files completed per second of wall time; MB/s
counts file bytes uploaded per second. "x baseline" is the exporter's rate divided by the
baseline's from the same repetition (the order alternates between repetitions). Then an
empty pass (``run_once`` with nothing new) and marking alone (the night's tasks inserted
again into a fresh configuration) are timed. Every figure is the median over the
repetitions; progress goes to stderr, the table to stdout.
"""
from __future__ import annotations

import argparse
import datetime
import secrets
import statistics
import sys
import tempfile
import time
import uuid
from collections import defaultdict
from dataclasses import dataclass, replace
from pathlib import Path

import yaml
from sqlalchemy import select
from common import (WORKERS, BenchError, choose_databases, fresh_database, measured,
                    meteorpi, missing_meteorpi, progress, record, serving)

from meteorpi_model import EventSearch, ExportConfiguration, FileSearch
from meteorpi_server.exporter import configs
from meteorpi_server.exporter.handshake import ImportClient, export_entity
from meteorpi_server.exporter.marking import mark
from meteorpi_server.exporter.runner import Exporter, ExporterSettings
from meteorpi_server.exporter.source import StoreSource
from meteorpi_server.node.demo import DemoPlan, generate
from meteorpi_server.node.recording import Recorder
from meteorpi_server.storage.db import Database
from meteorpi_server.storage.files import FileStore
from meteorpi_server.storage.orm import EventRow, FileRecordRow

USER = "bench-node"
DAY_MS = 86_400_000
FIRST_NIGHT = datetime.date(2026, 1, 1)


@dataclass(frozen=True)
class Plan:
    repeats: int
    night: DemoPlan


DEFAULT = Plan(repeats=3, night=DemoPlan(cameras=3, nights=1, events_per_night=40,
                                         files_per_event=3, standalone_files=4,
                                         file_size=64 * 1024))
QUICK = Plan(repeats=1, night=DemoPlan(cameras=3, nights=1, events_per_night=12,
                                       files_per_event=3, standalone_files=2,
                                       file_size=64 * 1024))


# Databases and the server --------------------------------------------------------------------

# The node ----------------------------------------------------------------------------------

class Node:
    """The camera node: its database, file store and recorder, in this process."""

    def __init__(self, database_url: str, file_store: Path):
        self.database = Database(database_url)
        self.database.upgrade()
        self.files = FileStore(file_store)
        self.recorder = Recorder(self.database, self.files)

    def record_night(self, night: int, plan: DemoPlan) -> tuple[int, int]:
        """Record night number ``night``; returns its (start, end) in ms."""
        date = FIRST_NIGHT + datetime.timedelta(days=night)
        generate(self.recorder, replace(plan, nights=1, first_night=date))
        start = int(datetime.datetime.combine(date, datetime.time(12), datetime.UTC)
                    .timestamp() * 1000)
        return start, start + DAY_MS

    def add_exports(self, name: str, url: str, password: str, window: tuple[int, int]) -> None:
        """Two configurations for one night: its events, and its stand-alone files."""
        after, before = window[0] - 1, window[1]
        with self.database.write() as session:
            for kind, search in (("events", EventSearch(after=after, before=before)),
                                 ("files", FileSearch(after=after, before=before))):
                configs.add(session, ExportConfiguration(
                    config_id=uuid.uuid4(), name=f"{name}-{kind}", target_url=f"{url}/import",
                    user_id=USER, password=password, search=search))

    def disable_all(self) -> None:
        with self.database.write() as session:
            for view in configs.list_views(session):
                if view.configuration.enabled:
                    configs.disable(session, view.name)

    def entities(self, window: tuple[int, int]) -> list:
        """The night's events and stand-alone files, as the exporter would load them."""
        source = StoreSource(self.database, self.files)
        with self.database.read() as session:
            event_ids = list(session.scalars(
                select(EventRow.event_id).where(EventRow.event_time >= window[0],
                                                EventRow.event_time < window[1])
                .order_by(EventRow.event_time)))
            file_ids = list(session.scalars(
                select(FileRecordRow.file_id).where(FileRecordRow.event_id.is_(None),
                                                    FileRecordRow.file_time >= window[0],
                                                    FileRecordRow.file_time < window[1])
                .order_by(FileRecordRow.file_time)))
        return ([source.entity("event", entity_id) for entity_id in event_ids]
                + [source.entity("file", entity_id) for entity_id in file_ids])


@dataclass(frozen=True)
class Pass:
    entities: int
    file_bytes: int
    seconds: float

    @property
    def entities_per_second(self) -> float:
        return self.entities / self.seconds

    @property
    def megabytes_per_second(self) -> float:
        return self.file_bytes / self.seconds / 1e6


def run_exporter(node: Node) -> Pass:
    exporter = Exporter(node.database, node.files, ExporterSettings(max_failures=0))
    start = time.perf_counter()
    summary = exporter.run_once()
    seconds = time.perf_counter() - start
    if summary.failures:
        first = next(target for target in summary.targets.values() if target.failures)
        raise BenchError(f"the exporter failed: {first.name}: {first.last_error}")
    return Pass(summary.entities_sent,
                sum(target.bytes_uploaded for target in summary.targets.values()), seconds)


def run_baseline(node: Node, url: str, password: str, entities: list) -> Pass:
    source = StoreSource(node.database, node.files)
    uploaded = 0
    with ImportClient(f"{url}/import", USER, password) as client:
        start = time.perf_counter()
        client.describe()
        for entity in entities:
            result = export_entity(client, entity, source)
            if not result.ok:
                raise BenchError(f"the baseline failed on {entity.id.hex}: {result.state}: "
                                 f"{result.message}")
            uploaded += result.bytes_uploaded
        seconds = time.perf_counter() - start
    return Pass(len(entities), uploaded, seconds)


def time_marking(node: Node, window: tuple[int, int], url: str, password: str) -> tuple[int, float]:
    """Marking alone: a fresh configuration over one night, marked in one statement."""
    name = f"mark-{secrets.token_hex(3)}"
    node.add_exports(name, url, password, window)
    with node.database.write() as session:
        row = configs.get_row(session, f"{name}-events")
        start = time.perf_counter()
        marked = mark(session, row)
        seconds = time.perf_counter() - start
        configs.remove(session, f"{name}-events")
        configs.remove(session, f"{name}-files")
    return marked, seconds


# One database ----------------------------------------------------------------------------------

def bench_database(kind: str, plan: Plan) -> dict[str, float]:
    samples: dict[str, list[float]] = defaultdict(list)
    password = secrets.token_urlsafe(18)
    with tempfile.TemporaryDirectory(prefix=f"meteorpi-bench-export-{kind}-") as directory, \
            fresh_database(kind, Path(directory) / "node.db", "export_node") as node_url, \
            fresh_database(kind, Path(directory) / "central.db", "export_central") as central_url:
        workdir = Path(directory)
        central_config = workdir / "central.yaml"
        central_config.write_text(yaml.safe_dump({
            "database_url": central_url, "file_store": str(workdir / "central-files"),
            "log_level": "warning"}))
        progress(f"{kind}: migrating two fresh databases, adding user {USER} on the central one")
        meteorpi(central_config, "db", "upgrade")
        meteorpi(central_config, "users", "add", USER, "--role", "import", "--password-stdin",
                 stdin=password + "\n")
        node = Node(node_url, workdir / "node-files")
        try:
            with serving(central_config) as url:
                for repeat in range(plan.repeats):
                    measure(node, url, password, plan, repeat, samples)
        finally:
            node.database.dispose()
    return {name: statistics.median(values) for name, values in samples.items()}


def measure(node: Node, url: str, password: str, plan: Plan, repeat: int, samples: dict) -> None:
    windows = [node.record_night(2 * repeat + offset, plan.night) for offset in (0, 1)]
    node.disable_all()
    node.add_exports(f"night{repeat}", url, password, windows[0])
    baseline_entities = node.entities(windows[1])

    def exporter_pass() -> Pass:
        return run_exporter(node)

    def baseline_pass() -> Pass:
        return run_baseline(node, url, password, baseline_entities)

    # Alternate which goes first, so a drift in the machine's speed favours neither.
    if repeat % 2 == 0:
        exporter, baseline = exporter_pass(), baseline_pass()
    else:
        baseline, exporter = baseline_pass(), exporter_pass()
    if exporter.entities != baseline.entities:
        raise BenchError(f"the exporter sent {exporter.entities} entities, the baseline "
                         f"{baseline.entities}: the nights differ")
    empty = run_exporter(node)
    if empty.entities:
        raise BenchError(f"the empty pass sent {empty.entities} entities")
    marked, mark_seconds = time_marking(node, windows[0], url, password)
    record(samples,
           exporter_entities=exporter.entities_per_second,
           exporter_mb=exporter.megabytes_per_second,
           baseline_entities=baseline.entities_per_second,
           baseline_mb=baseline.megabytes_per_second,
           entities_x=exporter.entities_per_second / baseline.entities_per_second,
           mb_x=exporter.megabytes_per_second / baseline.megabytes_per_second,
           empty_ms=empty.seconds * 1000,
           mark_per_second=marked / mark_seconds)
    progress(f"  run {repeat + 1}/{plan.repeats}: {exporter.entities} entities, "
             f"{exporter.file_bytes / 1e6:.1f} MB each way; exporter {exporter.seconds:.2f} s "
             f"({exporter.entities_per_second:.1f} entities/s, {exporter.megabytes_per_second:.1f} MB/s), "
             f"baseline {baseline.seconds:.2f} s ({baseline.entities_per_second:.1f} entities/s, "
             f"{baseline.megabytes_per_second:.1f} MB/s); empty pass {empty.seconds * 1000:.0f} ms; "
             f"marking {marked} tasks in {mark_seconds * 1000:.1f} ms")


# Output -------------------------------------------------------------------------------------

ROWS = (
    ("baseline (bare handshake driver), entities/s", "baseline_entities", "{:,.1f}"),
    ("baseline, MB/s of file bytes", "baseline_mb", "{:,.2f}"),
    ("exporter (export run --once), entities/s", "exporter_entities", "{:,.1f}"),
    ("  x baseline", "entities_x", "{:.2f}"),
    ("exporter, MB/s of file bytes", "exporter_mb", "{:,.2f}"),
    ("  x baseline", "mb_x", "{:.2f}"),
    ("empty pass (nothing new), ms", "empty_ms", "{:,.0f}"),
    ("marking, tasks/s (one INSERT ... SELECT)", "mark_per_second", "{:,.0f}"),
)


def print_table(results: dict[str, dict[str, float]], plan: Plan) -> None:
    night = plan.night
    events = night.cameras * night.events_per_night
    standalone = night.cameras * night.standalone_files
    width = max(len(label) for label, _, _ in ROWS)
    print(f"\nmeteorpi exporter benchmark: medians of {plan.repeats} run(s); a night of "
          f"{events} events x {night.files_per_event} files + {standalone} stand-alone files, "
          f"{night.file_size // 1024} KiB each; target: meteorpi serve, {WORKERS} gthread workers")
    kinds = list(results)
    print(f"{'figure':<{width}}" + "".join(f"  {kind:>12}" for kind in kinds))
    print("-" * (width + 14 * len(kinds)))
    for label, name, style in ROWS:
        print(f"{label:<{width}}" + "".join(f"  {style.format(results[kind][name]):>12}"
                                            for kind in kinds))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="one run of a smaller night")
    parser.add_argument("--database", choices=("sqlite", "postgresql", "both"),
                        help="default: both if PostgreSQL answers, else sqlite")
    parser.add_argument("--events", type=int, metavar="N", help="events per camera and night")
    parser.add_argument("--repeats", type=int, metavar="R", help="repetitions of every figure")
    arguments = parser.parse_args(argv)
    plan = QUICK if arguments.quick else DEFAULT
    if arguments.events:
        plan = replace(plan, night=replace(plan.night, events_per_night=arguments.events))
    if arguments.repeats:
        plan = replace(plan, repeats=arguments.repeats)
    if missing_meteorpi():
        return 2

    def measure():
        databases = choose_databases(None if arguments.database == "both" else arguments.database)
        return {kind: bench_database(kind, plan) for kind in databases}

    return measured(measure, lambda results: print_table(results, plan),
                    "the server was stopped and the databases removed")


if __name__ == "__main__":
    sys.exit(main())
