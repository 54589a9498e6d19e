"""Benchmark of the legacy handshake behind a round-robin load balancer over two hosts.

Run:  .venv/bin/python bench/legacy_balancer.py [--quick] [--no-files]

The legacy ``/import`` handshake keeps its entity cache (``import_cache_size``) in each
gunicorn worker, so a ``cached_entity`` request that lands on another worker, or another
host, is answered ``continue-nocache`` and the exporter sends the entity again. This
counts what that costs a legacy exporter when the server is two hosts behind a
round-robin TCP balancer rather than one, in HTTP round trips per entity.

A camera node is made in this process (a SQLite database and a file store in a temporary
directory, filled by ``meteorpi demo-data``'s generator: camera statuses, events with
their files, stand-alone files). Each repetition records a new night on it and exports
that night, with a fresh PostgreSQL database each time, to

(a) one host
    one ``meteorpi serve --workers 2`` (gthread), and
(b) two hosts
    two ``meteorpi serve --workers 2``, each with its own configuration file, port and
    local ``file_store`` directory, on the SAME database, behind a round-robin TCP proxy
    (``tests/helpers/round_robin_proxy.py``: each new client connection goes to the
    next host in turn, as a layer-4 balancer does).

Both servers run with ``batch_protocol: false``, so the exporter speaks only the legacy
handshake to them: the real export runner (``Exporter.run_once``, what ``meteorpi
export run --once`` does, in this process), with two configurations (the night's events,
its stand-alone files) running in parallel as in production. It describes the target
first (``GET /import``), so file bytes go by resumable upload, as they do for every
target that offers it.

Each setup is exported to three times per repetition, each time to a fresh database:

keep-alive
    the exporter as it is: a kept-alive connection per configuration;
close
    every request sent ``Connection: close``, as a client that never reuses a connection
    does (some camera node software does not): the balancer then really does spread
    each exchange over both hosts;
close, whole
    the same, and files uploaded whole (``POST /import/data``) as to the original server,
    which offers no resumable uploads: the exporter is told so (its ``describe()`` still
    asks, then forgets the answer, as after a 405). The most round trips a cache miss
    can add to an entity, relative to the rest.

The order of the six exports rotates from one repetition to the next.

Requests are counted on the server side: after the export each host's ``GET /metrics``
is read directly (not through the proxy), and every request to a route under ``/import``
counts (discovery, ``POST /import``, uploads and their offset queries);
``continue-nocache`` replies are counted there too. round trips/entity is that sum over
the hosts divided by the entities exported (events + stand-alone files; camera statuses
travel on their behalf). The (b) / (a) ratio compares the two setups of the same
repetition; the table shows medians over the repetitions (3, 1 with --quick).

Everything must arrive each time: the exporter must report every entity sent and no
failure, and the central database must hold exactly the night's events, file records
and file bytes (``stored_blob`` rows). In (b) the bytes of an uploaded file land on the
local disk of the host that took the upload, while the rows that say they are held are
in the shared database: the other host then stores a record against them all the same,
so no import fails, but only the host with the bytes can serve them (the other answers
``GET /files/<id>/data`` 404); a shared object store removes this. So every file's
bytes must be on one host or the other, and the output says how many are on one host
only. ``--no-files`` measures with events without files and camera statuses only.

Progress goes to stderr, the table to stdout. Databases are created as
``meteorpi_bench_balancer_<pid>_<random>`` through the ``test`` database
(``METEORPI_BENCH_POSTGRES_URL`` overrides where) and dropped at the end; servers are
stopped with SIGTERM.
"""
from __future__ import annotations

import argparse
import contextlib
import secrets
import statistics
import sys
import tempfile
import time
import uuid
from collections import defaultdict
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Iterator
from unittest import mock

import requests
import yaml
from sqlalchemy import func, select
from common import (WORKERS, BenchError, fresh_database, measured, meteorpi, missing_meteorpi,
                    postgres_problem, progress, record, row_counts, serving)
from export import USER, Node

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests" / "helpers"))
from round_robin_proxy import RoundRobinProxy  # noqa: E402
from scrapes import Scrape  # noqa: E402

from meteorpi_server.exporter import handshake  # noqa: E402
from meteorpi_server.exporter.runner import Exporter, ExporterSettings  # noqa: E402
from meteorpi_server.node.demo import DemoPlan  # noqa: E402
from meteorpi_server.protocol import CONTINUE_NOCACHE  # noqa: E402
from meteorpi_server.storage.files import FileStore  # noqa: E402
from meteorpi_server.storage.orm import EventRow, FileRecordRow  # noqa: E402

SETUPS = ("one", "two")
READER = "bench-reader"
#: Files whose download is tried on every host after each export.
DOWNLOAD_SAMPLE = 20


@dataclass(frozen=True)
class Variant:
    """How the exporter talks: its connections, and how it uploads a file's bytes."""

    name: str
    close_connections: bool = False
    whole_uploads: bool = False


VARIANTS = (Variant("keep-alive"), Variant("close", close_connections=True),
            Variant("close, whole", close_connections=True, whole_uploads=True))


@dataclass(frozen=True)
class Plan:
    repeats: int
    night: DemoPlan


DEFAULT = Plan(repeats=3, night=DemoPlan(cameras=4, nights=1, events_per_night=50,
                                         files_per_event=3, standalone_files=10,
                                         file_size=4 * 1024))
QUICK = Plan(repeats=1, night=DemoPlan(cameras=2, nights=1, events_per_night=10,
                                       files_per_event=3, standalone_files=3,
                                       file_size=4 * 1024))


# The servers ----------------------------------------------------------------------------

@dataclass
class Host:
    url: str
    files: Path


@dataclass
class Central:
    """One setup, running: its hosts, the URL an exporter is given, and the proxy if any."""

    database_url: str
    hosts: list[Host]
    url: str
    proxy: RoundRobinProxy | None = None


def write_config(path: Path, database_url: str, files: Path) -> Path:
    path.write_text(yaml.safe_dump({
        "database_url": database_url, "file_store": str(files), "log_level": "warning",
        # Only the legacy handshake: the exporter then sends entity by entity, as an
        # exporter without protocol v2 does.
        "batch_protocol": False, "metrics_access": "public"}))
    return path


@contextlib.contextmanager
def central(setup: str, workdir: Path, password: str) -> Iterator[Central]:
    """A fresh PostgreSQL database served by one host, or by two behind the proxy."""
    workdir.mkdir(parents=True)
    with fresh_database("postgresql", workdir / "unused.db", "balancer") as database_url, \
            contextlib.ExitStack() as stack:
        count = 1 if setup == "one" else 2
        configs = [write_config(workdir / f"host{index}.yaml", database_url,
                                workdir / f"files{index}") for index in range(count)]
        meteorpi(configs[0], "db", "upgrade")
        for user, role in ((USER, "import"), (READER, "user")):
            meteorpi(configs[0], "users", "add", user, "--role", role, "--password-stdin",
                     stdin=password + "\n")
        hosts = [Host(stack.enter_context(serving(config)), workdir / f"files{index}")
                 for index, config in enumerate(configs)]
        if count == 1:
            yield Central(database_url, hosts, hosts[0].url)
            return
        backends = [("127.0.0.1", int(host.url.rsplit(":", 1)[1])) for host in hosts]
        proxy = stack.enter_context(RoundRobinProxy(backends))
        yield Central(database_url, hosts, proxy.url, proxy)


# One export -----------------------------------------------------------------------------

@dataclass
class Outcome:
    entities: int
    seconds: float
    requests: list[int]  # per host, routes under /import
    nocache: int
    connections: tuple[int, ...] = ()
    one_host_only: int = 0
    downloads_refused: int = 0
    downloads_tried: int = 0

    @property
    def per_entity(self) -> float:
        return sum(self.requests) / self.entities


def closing_session() -> requests.Session:
    """The exporter's own session, sending ``Connection: close`` with every request."""
    session = ORIGINAL_TARGET_SESSION()
    session.headers["Connection"] = "close"
    return session


def describe_as_original_server(client: handshake.ImportClient) -> None:
    """The discovery request is sent (and counted) as usual, then its answer dropped as
    the client drops a 405's: no resumable uploads, no server id."""
    ORIGINAL_DESCRIBE(client)
    client.capabilities, client._resumable = None, None


ORIGINAL_TARGET_SESSION = handshake.target_session
ORIGINAL_DESCRIBE = handshake.ImportClient.describe


def export(node: Node, target: Central, name: str, password: str, window: tuple[int, int],
           variant: Variant) -> tuple[int, float]:
    """The night exported by the runner; (entities sent, seconds)."""
    node.disable_all()
    node.add_exports(name, target.url, password, window)
    exporter = Exporter(node.database, node.files, ExporterSettings(max_failures=0))
    with contextlib.ExitStack() as patches:
        if variant.close_connections:
            patches.enter_context(mock.patch.object(handshake, "target_session",
                                                    closing_session))
        if variant.whole_uploads:
            patches.enter_context(mock.patch.object(handshake.ImportClient, "describe",
                                                    describe_as_original_server))
        start = time.perf_counter()
        summary = exporter.run_once()
        seconds = time.perf_counter() - start
    if summary.failures:
        first = next(view for view in summary.targets.values() if view.failures)
        raise BenchError(f"{name}: the exporter failed: {first.name}: {first.last_error}")
    return summary.entities_sent, seconds


def read_counts(target: Central) -> tuple[list[int], int]:
    """Requests under /import per host, and continue-nocache replies over all hosts."""
    requests_per_host, nocache = [], 0
    for host in target.hosts:
        response = requests.get(f"{host.url}/metrics", timeout=10)
        if response.status_code != 200:
            raise BenchError(f"{host.url}/metrics answered {response.status_code}")
        scrape = Scrape(response.text)
        requests_per_host.append(int(sum(
            sample.value for sample in scrape.samples
            if sample.name == "meteorpi_http_requests_total"
            and sample.labels.get("route", "").startswith("/import"))))
        nocache += int(scrape.value("meteorpi_import_results_total", state=CONTINUE_NOCACHE))
    return requests_per_host, nocache


@dataclass(frozen=True)
class NightContents:
    events: int
    standalone: int
    files: dict[uuid.UUID, int]  # file id -> size

    @property
    def entities(self) -> int:
        return self.events + self.standalone


def night_contents(node: Node, window: tuple[int, int]) -> NightContents:
    with node.database.read() as session:
        in_window = (FileRecordRow.file_time >= window[0], FileRecordRow.file_time < window[1])
        files = dict(session.execute(select(FileRecordRow.file_id, FileRecordRow.file_size)
                                     .where(*in_window)).all())
        events = session.scalar(select(func.count()).select_from(EventRow).where(
            EventRow.event_time >= window[0], EventRow.event_time < window[1]))
        standalone = session.scalar(select(func.count()).select_from(FileRecordRow).where(
            FileRecordRow.event_id.is_(None), *in_window))
    return NightContents(events, standalone, files)


def check_arrived(name: str, target: Central, night: NightContents) -> int:
    """Everything of the night is in the central database and every file's bytes on some
    host; returns how many files have their bytes on one host only (of two)."""
    counts = row_counts(target.database_url)
    expected = {"events": night.events, "files": len(night.files), "blobs": len(night.files)}
    wrong = {key: (counts[key], value) for key, value in expected.items() if counts[key] != value}
    if wrong:
        raise BenchError(f"{name}: the central database holds {counts}, expected {expected}")
    stores = [FileStore(host.files) for host in target.hosts]
    one_host_only = 0
    for file_id, size in night.files.items():
        holders = [index for index, files in enumerate(stores)
                   if _size(files.path_for(file_id)) == size]
        if not holders:
            raise BenchError(f"{name}: the bytes of file {file_id.hex} are on no host")
        one_host_only += len(holders) < len(stores)
    return one_host_only


def try_downloads(target: Central, night: NightContents, password: str) -> tuple[int, int]:
    """Downloads of a sample of the night's files from each host directly: (answered 404,
    tried). Anything but 200 or 404 stops the benchmark."""
    sample = sorted(night.files)[:DOWNLOAD_SAMPLE]
    refused = 0
    with requests.Session() as session:
        session.auth = (READER, password)
        for host in target.hosts:
            for file_id in sample:
                response = session.get(f"{host.url}/files/content/{file_id.hex}", timeout=30)
                if response.status_code not in (200, 404):
                    raise BenchError(f"{host.url} answered {response.status_code} for the "
                                     f"download of file {file_id.hex}")
                refused += response.status_code == 404
    return refused, len(sample) * len(target.hosts)


def _size(path: Path) -> int | None:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return None


def measure_one(node: Node, setup: str, variant: Variant, workdir: Path, password: str,
                window: tuple[int, int], night: NightContents, repeat: int) -> Outcome:
    name = f"r{repeat}-{setup}-{variant.name.replace(', ', '-')}"
    with central(setup, workdir / name, password) as target:
        entities, seconds = export(node, target, name, password, window, variant)
        if entities != night.entities:
            raise BenchError(f"{name}: the exporter sent {entities} entities, the night has "
                             f"{night.entities}")
        requests_per_host, nocache = read_counts(target)
        one_host_only = check_arrived(name, target, night)
        refused, tried = try_downloads(target, night, password)
        connections = target.proxy.connections_per_backend if target.proxy else ()
    outcome = Outcome(entities, seconds, requests_per_host, nocache, connections, one_host_only,
                      refused, tried)
    progress(f"  {setup} host{'s' if setup == 'two' else ''}, {variant.name}: {entities} entities "
             f"in {seconds:.1f} s, {sum(requests_per_host):,} requests "
             f"({' + '.join(str(n) for n in requests_per_host)} per host), "
             f"{outcome.per_entity:.2f} per entity, {nocache} continue-nocache"
             + (f"; proxy connections per host {connections}" if connections else "")
             + (f"; {one_host_only} files' bytes on one host only" if setup == "two" else "")
             + (f"; {refused} of {tried} downloads answered 404" if tried else ""))
    return outcome


# The benchmark ----------------------------------------------------------------------------

def bench(plan: Plan) -> dict[str, float]:
    problem = postgres_problem()
    if problem is not None:
        raise BenchError(f"PostgreSQL is needed (one database shared by two hosts) and is "
                         f"not reachable: {problem}")
    samples: dict[str, list[float]] = defaultdict(list)
    password = secrets.token_urlsafe(18)
    runs = [(setup, variant) for variant in VARIANTS for setup in SETUPS]
    with tempfile.TemporaryDirectory(prefix="meteorpi-bench-balancer-") as directory:
        workdir = Path(directory)
        node = Node(f"sqlite:///{workdir / 'node.db'}", workdir / "node-files")
        try:
            for repeat in range(plan.repeats):
                window = node.record_night(repeat, plan.night)
                night = night_contents(node, window)
                progress(f"run {repeat + 1}/{plan.repeats}: a night of {night.events} events, "
                         f"{night.standalone} stand-alone files, {len(night.files)} files")
                outcomes = {}
                shift = repeat % len(runs)
                for setup, variant in runs[shift:] + runs[:shift]:
                    outcomes[setup, variant.name] = measure_one(
                        node, setup, variant, workdir, password, window, night, repeat)
                for variant in VARIANTS:
                    key = variant.name
                    one, two = outcomes["one", key], outcomes["two", key]
                    record(samples, **{
                        f"one_{key}": one.per_entity,
                        f"two_{key}": two.per_entity,
                        f"ratio_{key}": two.per_entity / one.per_entity,
                        f"nocache_one_{key}": one.nocache / one.entities,
                        f"nocache_two_{key}": two.nocache / two.entities,
                        f"share_{key}": max(two.requests) / sum(two.requests),
                        f"connections_{key}": sum(two.connections),
                        f"one_host_only_{key}": two.one_host_only,
                        f"refused_one_{key}": one.downloads_refused / max(1, one.downloads_tried),
                        f"refused_two_{key}": two.downloads_refused / max(1, two.downloads_tried),
                        f"entities_one_{key}": one.entities / one.seconds,
                        f"entities_two_{key}": two.entities / two.seconds})
        finally:
            node.database.dispose()
    return {name: statistics.median(values) for name, values in samples.items()}


ROWS = (
    ("(a) one host: round trips/entity", "one_{}", "{:.2f}"),
    ("(b) two hosts behind the proxy: round trips/entity", "two_{}", "{:.2f}"),
    ("(b) / (a)", "ratio_{}", "{:.2f}"),
    ("continue-nocache/entity, (a)", "nocache_one_{}", "{:.2f}"),
    ("continue-nocache/entity, (b)", "nocache_two_{}", "{:.2f}"),
    ("(b): busier host's share of the requests", "share_{}", "{:.0%}"),
    ("(b): connections through the proxy", "connections_{}", "{:,.0f}"),
    ("(b): files whose bytes are on one host only", "one_host_only_{}", "{:,.0f}"),
    ("downloads answered 404, (a)", "refused_one_{}", "{:.0%}"),
    ("downloads answered 404, (b), from either host", "refused_two_{}", "{:.0%}"),
    ("entities/s, (a)", "entities_one_{}", "{:,.1f}"),
    ("entities/s, (b)", "entities_two_{}", "{:,.1f}"),
)


def print_table(figures: dict[str, float], plan: Plan, with_files: bool) -> None:
    night = plan.night
    events = night.cameras * night.events_per_night
    standalone = night.cameras * night.standalone_files
    what = (f"{events} events x {night.files_per_event} files + {standalone} stand-alone "
            f"files of {night.file_size // 1024} KiB" if with_files
            else f"{events} events without files, camera statuses only")
    print(f"\nlegacy handshake, one host vs two behind a round-robin TCP proxy: medians of "
          f"{plan.repeats} run(s); a night of {what}; {night.cameras} cameras; each host "
          f"meteorpi serve, {WORKERS} gthread workers, batch_protocol off; one PostgreSQL "
          f"database; requests counted by the servers (/metrics, routes under /import)")
    width = max(len(label) for label, _, _ in ROWS)
    print(f"{'figure':<{width}}" + "".join(f"  {variant.name:>12}" for variant in VARIANTS))
    print("-" * (width + 14 * len(VARIANTS)))
    for label, name, style in ROWS:
        print(f"{label:<{width}}" + "".join(
            f"  {style.format(figures[name.format(variant.name)]):>12}" for variant in VARIANTS))
    print("keep-alive: the exporter as it is; close: every request sent 'Connection: close'; "
          "close, whole: and files uploaded whole, as to the original server")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="one run of a smaller night")
    parser.add_argument("--no-files", action="store_true",
                        help="events without files and camera statuses only")
    parser.add_argument("--events", type=int, metavar="N", help="events per camera and night")
    parser.add_argument("--repeats", type=int, metavar="R", help="repetitions of every figure")
    arguments = parser.parse_args(argv)
    plan = QUICK if arguments.quick else DEFAULT
    if arguments.events is not None:
        plan = replace(plan, night=replace(plan.night, events_per_night=arguments.events))
    if arguments.repeats:
        plan = replace(plan, repeats=arguments.repeats)
    if arguments.no_files:
        plan = replace(plan, night=replace(plan.night, files_per_event=0, standalone_files=0))
    if missing_meteorpi():
        return 2
    return measured(lambda: bench(plan),
                    lambda figures: print_table(figures, plan, not arguments.no_files),
                    "the servers and the proxy were stopped and the databases removed")


if __name__ == "__main__":
    sys.exit(main())
