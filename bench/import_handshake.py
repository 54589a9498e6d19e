"""Benchmark of the legacy import handshake against a real ``meteorpi serve``.

Run:  .venv/bin/python bench/import_handshake.py [--quick] [--database sqlite|postgresql|both]

For each database, a fresh one is made (a SQLite file in a temporary directory, or a
uniquely named PostgreSQL database created through the ``test`` database and dropped at
the end), migrated with ``meteorpi db upgrade``, given an ``import`` user with
``meteorpi users add``, and served by ``meteorpi serve --workers 2`` (gunicorn, gthread
workers) on a free loopback port. The client is this process, sequential, on the same
two cores as the server, so every figure is also measured as a ratio to a baseline
taken just before it, in the same run, against the same server:

health req/s
    Sequential ``GET /health`` with one keep-alive ``requests.Session``: what a Python
    client and this server can do for a request that does nothing. The baseline.
import probe req/s, auth cache on / off
    Sequential authenticated ``POST /import`` of ``{"type": "cached_entity",
    "cached_entity_id": <random hex>}``: the server answers ``continue-nocache`` without
    touching storage, so this is the cost of HTTP Basic authentication plus the protocol
    plumbing. Measured with the default ``auth_cache_size`` (1024) and again after a
    restart with ``auth_cache_size: 0`` (every request then runs the full password
    hash). "x health" is each rate divided by the health rate measured just before it;
    "on / off" is the median rate with the cache divided by the median rate without it.
handshake pass 1
    A synthetic camera night (3 cameras, each with 3 consecutive statuses; N events of 2
    files of 20 KB each, N = 200 by default and 60 with --quick; N/10 stand-alone files
    of 20 KB) replicated with the project's exporter driver (``export_entity`` over one
    ``ImportClient``, so one keep-alive connection), with the auth cache on.
    entities/s = events + stand-alone files completed per second of wall time;
    req/s = HTTP requests (JSON and uploads) per second; req/entity = requests per
    completed entity (about 5 for an event with 2 files); "x health" = req/s divided by
    the health rate. Every entity must end ``complete``.
handshake pass 2
    The same entities sent again: everything is already stored, so each should take one
    request answered ``complete``.

Each repetition uses a new data set (new ids) on the same server. Every figure is
repeated (3 times, once with --quick) and the table shows medians; ratios are medians of
the per-repetition ratios. Progress and each run's figures go to stderr, the table to
stdout.
"""
from __future__ import annotations

import argparse
import secrets
import statistics
import sys
import tempfile
import time
import uuid
from collections import defaultdict
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

import requests
import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests" / "helpers"))
from common import (WORKERS, BenchError, choose_databases, fresh_database,  # noqa: E402
                    measured, meteorpi, missing_meteorpi, progress, record, serving)

import factories  # noqa: E402  (the tests' record factories)

from meteorpi_server.exporter.handshake import ImportClient, TargetError, export_entity  # noqa: E402

USER = "bench"
HOUR_MS = 3_600_000


@dataclass(frozen=True)
class Plan:
    """How much of everything one run does."""

    repeats: int
    health_requests: int
    cached_auth_requests: int
    uncached_auth_requests: int  # each costs a full password hash (~60 ms)
    events: int
    standalone_files: int
    files_per_event: int = 2
    file_size: int = 20 * 1024
    cameras: int = 3
    statuses_per_camera: int = 3


QUICK = Plan(repeats=1, health_requests=300, cached_auth_requests=200,
             uncached_auth_requests=10, events=60, standalone_files=6)
DEFAULT = Plan(repeats=3, health_requests=600, cached_auth_requests=400,
               uncached_auth_requests=20, events=200, standalone_files=20)


# Databases ----------------------------------------------------------------------------

# The server ---------------------------------------------------------------------------

def write_config(path: Path, database_url: str, file_store: Path, auth_cache_size: int) -> Path:
    path.write_text(yaml.safe_dump({"database_url": database_url, "file_store": str(file_store),
                                    "auth_cache_size": auth_cache_size, "log_level": "warning"}))
    return path


def prepare(config: Path, password: str) -> None:
    """Migrate the empty database and add the benchmark's import user."""
    meteorpi(config, "db", "upgrade")
    meteorpi(config, "users", "add", USER, "--role", "import", "--password-stdin",
             stdin=password + "\n")


# Measurements -------------------------------------------------------------------------

def rate(count: int, one_request: Callable[[], None], warm_up: int) -> float:
    """Requests per second of ``count`` sequential calls, after a few untimed ones.

    The warm-up also pins the keep-alive connection (and so the gunicorn worker, whose
    caches are per process) that the timed calls use.
    """
    for _ in range(warm_up):
        one_request()
    start = time.perf_counter()
    for _ in range(count):
        one_request()
    return count / (time.perf_counter() - start)


def health_rate(url: str, count: int) -> float:
    with requests.Session() as session:
        def get() -> None:
            response = session.get(f"{url}/health", timeout=10)
            if response.status_code != 200:
                raise BenchError(f"GET /health answered {response.status_code}: {response.text[:200]}")

        return rate(count, get, warm_up=5)


def import_probe_rate(url: str, password: str, count: int, warm_up: int) -> float:
    """Authenticated POST /import of an unknown cached_entity id (answered continue-nocache)."""
    with requests.Session() as session:
        session.auth = (USER, password)

        def post() -> None:
            document = {"type": "cached_entity", "cached_entity_id": uuid.uuid4().hex}
            response = session.post(f"{url}/import", json=document, timeout=30)
            state = response.json().get("state") if response.status_code == 200 else None
            if state != "continue-nocache":
                raise BenchError(f"POST /import answered {response.status_code}: {response.text[:200]}")

        return rate(count, post, warm_up)


def build_dataset(root: Path, plan: Plan) -> factories.DataSet:
    """A night of ``plan.cameras`` cameras, each with ``plan.statuses_per_camera``
    consecutive statuses; events and stand-alone files are spread over cameras and time."""
    dataset = factories.DataSet(root)
    cameras = []
    for camera in range(plan.cameras):
        starts = [factories.NIGHT + index * HOUR_MS for index in range(plan.statuses_per_camera)]
        cameras.append([factories.status(f"cam-{camera}", valid_from=start,
                                         valid_to=start + HOUR_MS if index + 1 < len(starts) else None)
                        for index, start in enumerate(starts)])

    def owner_and_time(index: int, count: int) -> tuple:
        statuses = cameras[index % plan.cameras]
        position = (index // plan.cameras) * len(statuses) / max(1, -(-count // plan.cameras))
        owner = statuses[int(position)]
        return owner, owner.valid_from + int((position % 1) * HOUR_MS)

    for index in range(plan.events):
        owner, time_ms = owner_and_time(index, plan.events)
        dataset.add_event(owner, file_count=plan.files_per_event, size=plan.file_size, time_ms=time_ms)
    for index in range(plan.standalone_files):
        owner, time_ms = owner_and_time(index, plan.standalone_files)
        dataset.add_file(owner, size=plan.file_size, time_ms=time_ms)
    return dataset


@dataclass(frozen=True)
class PassResult:
    entities: int
    requests: int
    seconds: float
    files_uploaded: int

    @property
    def entities_per_second(self) -> float:
        return self.entities / self.seconds

    @property
    def requests_per_second(self) -> float:
        return self.requests / self.seconds

    @property
    def requests_per_entity(self) -> float:
        return self.requests / self.entities


def replicate(url: str, password: str, dataset: factories.DataSet) -> PassResult:
    """Send every event and stand-alone file with the exporter's driver; all must complete."""
    entities = dataset.events + dataset.files
    with ImportClient(f"{url}/import", USER, password) as client:
        start = time.perf_counter()
        try:
            results = [export_entity(client, entity, dataset) for entity in entities]
        except TargetError as error:
            raise BenchError(f"the server failed during the handshake: {error}") from error
        seconds = time.perf_counter() - start
        sent = client.requests_sent
    failed = [result for result in results if not result.ok]
    if failed:
        raise BenchError(f"{len(failed)} of {len(entities)} entities did not complete; the "
                         f"first: {failed[0].state}: {failed[0].message}")
    return PassResult(len(entities), sent, seconds, sum(result.files_uploaded for result in results))


# One database -------------------------------------------------------------------------

def measure_with_cache(url: str, password: str, plan: Plan, workdir: Path, samples: dict) -> None:
    """Health, the import probe and both handshake passes, ``plan.repeats`` times."""
    expected_uploads = plan.events * plan.files_per_event + plan.standalone_files
    for repeat in range(1, plan.repeats + 1):
        dataset = build_dataset(workdir / f"node{repeat}", plan)
        health = health_rate(url, plan.health_requests)
        probe = import_probe_rate(url, password, plan.cached_auth_requests, warm_up=5)
        first = replicate(url, password, dataset)
        second = replicate(url, password, dataset)
        if first.files_uploaded != expected_uploads:
            progress(f"  NOTE: pass 1 uploaded {first.files_uploaded} files, expected {expected_uploads}")
        if second.requests != second.entities:
            progress(f"  NOTE: pass 2 needed {second.requests} requests for {second.entities} entities")
        record(samples, health=health, auth_on=probe, auth_on_x_health=probe / health,
               pass1_entities=first.entities_per_second, pass1_requests=first.requests_per_second,
               pass1_per_entity=first.requests_per_entity,
               pass1_x_health=first.requests_per_second / health,
               pass2_entities=second.entities_per_second,
               pass2_x_health=second.requests_per_second / health)
        progress(f"  run {repeat}/{plan.repeats}: health {health:,.0f} req/s, import probe "
                 f"{probe:,.0f} req/s; pass 1: {first.entities} entities, {first.requests} "
                 f"requests in {first.seconds:.2f} s ({first.entities_per_second:,.0f} entities/s, "
                 f"{first.requests_per_second:,.0f} req/s); pass 2: {second.requests} requests in "
                 f"{second.seconds:.2f} s ({second.entities_per_second:,.0f} entities/s)")


def measure_without_cache(url: str, password: str, plan: Plan, samples: dict) -> None:
    for repeat in range(1, plan.repeats + 1):
        health = health_rate(url, plan.health_requests)
        # One untimed request pins the connection; each costs a full password hash.
        probe = import_probe_rate(url, password, plan.uncached_auth_requests, warm_up=1)
        record(samples, health_off_server=health, auth_off=probe, auth_off_x_health=probe / health)
        progress(f"  run {repeat}/{plan.repeats}: health {health:,.0f} req/s, import probe "
                 f"{probe:,.1f} req/s")


def bench_database(kind: str, plan: Plan) -> dict[str, float]:
    """Every figure for one database: medians over the repetitions."""
    samples: dict[str, list[float]] = defaultdict(list)
    password = secrets.token_urlsafe(18)
    with tempfile.TemporaryDirectory(prefix=f"meteorpi-bench-{kind}-") as directory, \
            fresh_database(kind, Path(directory) / "meteorpi.db") as database_url:
        workdir = Path(directory)
        configs = {size: write_config(workdir / f"server-auth-cache-{size}.yaml", database_url,
                                      workdir / "files", size) for size in (1024, 0)}
        progress(f"{kind}: migrating a fresh database and adding user {USER}")
        prepare(configs[1024], password)
        progress(f"{kind}: auth cache on (auth_cache_size 1024), {plan.repeats} run(s)")
        with serving(configs[1024]) as url:
            measure_with_cache(url, password, plan, workdir, samples)
        progress(f"{kind}: auth cache off (auth_cache_size 0), {plan.repeats} run(s)")
        with serving(configs[0]) as url:
            measure_without_cache(url, password, plan, samples)
    figures = {name: statistics.median(values) for name, values in samples.items()}
    figures["auth_on_over_off"] = figures["auth_on"] / figures["auth_off"]
    return figures


# Output -------------------------------------------------------------------------------

ROWS = (  # (label, figure, format)
    ("GET /health, req/s (baseline)", "health", "{:,.0f}"),
    ("POST /import probe, auth cache on, req/s", "auth_on", "{:,.0f}"),
    ("  x health", "auth_on_x_health", "{:.2f}"),
    ("POST /import probe, auth cache off, req/s", "auth_off", "{:,.1f}"),
    ("  x health", "auth_off_x_health", "{:.3f}"),
    ("auth cache on / off", "auth_on_over_off", "{:.1f}x"),
    ("handshake pass 1, entities/s", "pass1_entities", "{:,.0f}"),
    ("handshake pass 1, req/s", "pass1_requests", "{:,.0f}"),
    ("handshake pass 1, req/entity", "pass1_per_entity", "{:.2f}"),
    ("handshake pass 1, req/s x health", "pass1_x_health", "{:.2f}"),
    ("handshake pass 2 (all stored), entities/s", "pass2_entities", "{:,.0f}"),
    ("handshake pass 2, req/s x health", "pass2_x_health", "{:.2f}"),
)


def print_table(results: dict[str, dict[str, float]], plan: Plan) -> None:
    kinds = list(results)
    width = max(len(label) for label, _, _ in ROWS)
    print(f"\nmeteorpi import handshake benchmark: medians of {plan.repeats} run(s); "
          f"{plan.events} events x {plan.files_per_event} files of {plan.file_size // 1024} KB "
          f"+ {plan.standalone_files} stand-alone files; {WORKERS} gthread workers")
    print(f"{'figure':<{width}}" + "".join(f"  {kind:>12}" for kind in kinds))
    print("-" * (width + 14 * len(kinds)))
    for label, name, style in ROWS:
        print(f"{label:<{width}}" + "".join(f"  {style.format(results[kind][name]):>12}"
                                            for kind in kinds))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="one run of a smaller data set (well under a minute)")
    parser.add_argument("--database", choices=("sqlite", "postgresql", "both"),
                        help="default: both if PostgreSQL answers at "
                             "$METEORPI_BENCH_POSTGRES_URL (or the local test server), else sqlite")
    parser.add_argument("--events", type=int, metavar="N",
                        help=f"events per data set (default {DEFAULT.events}, "
                             f"{QUICK.events} with --quick); stand-alone files are N/10")
    parser.add_argument("--repeats", type=int, metavar="R",
                        help=f"runs of each figure (default {DEFAULT.repeats}, "
                             f"{QUICK.repeats} with --quick)")
    arguments = parser.parse_args(argv)
    plan = QUICK if arguments.quick else DEFAULT
    if arguments.events:
        plan = replace(plan, events=arguments.events,
                       standalone_files=max(1, arguments.events // 10))
    if arguments.repeats:
        plan = replace(plan, repeats=arguments.repeats)
    if missing_meteorpi():
        return 2
    return measured(
        lambda: {kind: bench_database(kind, plan) for kind in choose_databases(arguments.database)},
        lambda results: print_table(results, plan),
        "the servers were stopped and the databases removed")


if __name__ == "__main__":
    sys.exit(main())
