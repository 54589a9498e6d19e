"""Benchmark of batched replication (protocol v2) against the legacy handshake.

Run:  .venv/bin/python bench/batch_replication.py [--quick] [--database sqlite|postgresql|both]

One synthetic camera night is built per run, on disk, as the exporter's EntitySource
(``tests/helpers/factories.py`` ``DataSet``): 5 cameras, each changing status every
2 hours over a 12-hour night (staggered between cameras, 6 statuses each); 5,000 events
of 3 files of 20 KB each and 1,000 stand-alone 20 KB files (100 and 20 with --quick),
spread evenly over the night and the cameras and sent in time order.

For each database the night is replicated twice over loopback, to two servers that run
side by side with the same configuration and each its own fresh database and file store
(``meteorpi serve --workers 2``, gthread; the server helpers of
``bench/import_handshake.py``):

legacy
    The legacy handshake, entity by entity, with the exporter's own driver:
    ``ImportClient.describe()`` (so file bytes go by resumable upload, as the real
    exporter does), then ``export_entity`` for each event and stand-alone file.
v2
    ``BatchSender(client, source, concurrency=DEFAULT_CONCURRENCY).send``: a plan, the
    missing statuses, the missing files' bytes (several uploads at once) and the records,
    per batch of the server's ``batch_max_entities``.

The client runs on the same two shared cores as the servers, and the machine's load
drifts over minutes, so the two protocols are measured alternately: the night is cut
into slices of one batch (``batch_max_entities`` entities, 500 by default), and each
slice is sent first with the legacy handshake then with v2 (the order alternates from
slice to slice). Each protocol's wall time is the sum of its slices; the v2 batches are
exactly those that one ``send`` of the whole night would make.

records/s
    (events + stand-alone files) / wall time of the pass. Every entity must end
    ``complete``; the stored row counts are checked afterwards.
ratio
    v2 records/s divided by legacy records/s (the issue's aim: 20 or more).
requests/event
    Every HTTP request of the pass (including the ``GET /import`` discovery request,
    uploads and offset queries) divided by the number of events.
nothing left, s
    Once both passes are done, the whole night is sent again to each server, whose
    target already holds everything: legacy, one ``export_entity`` per entity (each is
    answered ``complete`` at once); v2, one ``send`` (one plan request per batch).

Then, on SQLite only, v2 with concurrency 2, 4 and 8 on a smaller night: 500 events and
100 stand-alone files (every tenth of the full night), or the whole --quick night. Three
fresh servers run side by side; the night is cut into three slices (batches of a third
of it, at most ``batch_max_entities``) and each slice goes to all three servers in a
rotating order, so each is first, second and last once. "x c=4" is a rate divided by
the rate with the exporter's current default of 4.

``GET /health`` (sequential, one keep-alive session) is measured against the legacy
server before and after the passes: a baseline that shows how loaded the machine was.

Progress goes to stderr (a line for about every 10 % of the entities of each pass);
the tables go to stdout at the end. Everything is made in temporary directories that are
removed; PostgreSQL databases are created as ``meteorpi_bench_<pid>_<random>`` through
the ``test`` database and dropped at the end (``METEORPI_BENCH_POSTGRES_URL`` overrides
where). Servers are stopped with SIGTERM.
"""
from __future__ import annotations

import argparse
import contextlib
import math
import secrets
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))

import common  # noqa: E402  (server, database and progress helpers)
import import_handshake  # noqa: E402  (its server configuration and health figures)
from common import BenchError, progress  # noqa: E402
from import_handshake import factories  # noqa: E402

from meteorpi_server.exporter.batch import DEFAULT_CONCURRENCY, BatchSender, BatchStats  # noqa: E402
from meteorpi_server.exporter.handshake import ImportClient, TargetError, export_entity  # noqa: E402

HOUR_MS = 3_600_000
CONCURRENCIES = (2, 4, 8)


@dataclass(frozen=True)
class Plan:
    events: int
    standalone_files: int
    sweep_events: int  # the concurrency sweep's sizes (the --quick sizes)
    sweep_files: int
    cameras: int = 5
    night_hours: int = 12
    status_every_hours: int = 2
    files_per_event: int = 3
    file_size: int = 20 * 1000
    health_requests: int = 300


QUICK = Plan(events=100, standalone_files=20, sweep_events=100, sweep_files=20)
DEFAULT = Plan(events=5000, standalone_files=1000, sweep_events=500, sweep_files=100)


# The night ----------------------------------------------------------------------------

@dataclass
class Night:
    dataset: factories.DataSet
    entities: list  # events and stand-alone files, in time order

    @property
    def events(self) -> int:
        return sum(1 for entity in self.entities if entity.ENTITY_TYPE == "event")

    def subset(self, events: int, files: int) -> list:
        """About ``events`` events and ``files`` stand-alone files spread over the night."""
        chosen_events = _spread([e for e in self.entities if e.ENTITY_TYPE == "event"], events)
        chosen_files = _spread([e for e in self.entities if e.ENTITY_TYPE == "file"], files)
        chosen = {entity.id for entity in chosen_events + chosen_files}
        return [entity for entity in self.entities if entity.id in chosen]


def _spread(items: list, count: int) -> list:
    if count >= len(items):
        return list(items)
    return [items[index * len(items) // count] for index in range(count)]


def build_night(root: Path, plan: Plan) -> Night:
    """5 cameras whose statuses change every couple of hours (at staggered times), with
    events and stand-alone files spread evenly over the night and the cameras."""
    night_ms = plan.night_hours * HOUR_MS
    every_ms = plan.status_every_hours * HOUR_MS
    changes = math.ceil(night_ms / every_ms)
    timelines = []
    for camera in range(plan.cameras):
        stagger = camera * every_ms // plan.cameras
        starts = [factories.NIGHT] + [factories.NIGHT + stagger + k * every_ms
                                      for k in range(1, changes)]
        timelines.append([factories.status(f"cam-{camera}", valid_from=start,
                                           valid_to=starts[i + 1] if i + 1 < len(starts) else None)
                          for i, start in enumerate(starts)])

    def owner(camera: int, time_ms: int):
        return [status for status in timelines[camera] if status.valid_from <= time_ms][-1]

    dataset = factories.DataSet(root)
    timed = []
    for index in range(plan.events):
        time_ms = factories.NIGHT + index * night_ms // plan.events
        camera = index % plan.cameras
        timed.append((time_ms, dataset.add_event(owner(camera, time_ms), plan.files_per_event,
                                                 plan.file_size, time_ms)))
    for index in range(plan.standalone_files):
        time_ms = factories.NIGHT + (2 * index + 1) * night_ms // (2 * plan.standalone_files)
        camera = (index * 3) % plan.cameras
        timed.append((time_ms, dataset.add_file(owner(camera, time_ms), plan.file_size, time_ms)))
    timed.sort(key=lambda pair: pair[0])
    return Night(dataset, [entity for _, entity in timed])


# One server per protocol --------------------------------------------------------------

@dataclass
class Target:
    """A running server with a fresh database, and the client state of one protocol."""

    name: str
    url: str
    database_url: str
    client: ImportClient
    sender: BatchSender | None = None
    stats: BatchStats = field(default_factory=BatchStats)
    seconds: float = 0.0
    done: int = 0
    next_report: int = 1
    discovery_requests: int = 0

    @property
    def requests(self) -> int:
        """Every HTTP request sent so far, the discovery request included."""
        if self.sender is None:
            return self.client.requests_sent
        # The client counts describe(), the batch requests and any legacy fallback; the
        # stats count the batch requests, the uploads and the fallbacks.
        return self.discovery_requests + self.stats.requests


@dataclass(frozen=True)
class Spec:
    """One server to start: where, under which name, and the v2 concurrency (None: legacy)."""

    workdir: Path
    name: str
    concurrency: int | None


def start_targets(stack: contextlib.ExitStack, kind: str, specs: list[Spec], password: str,
                  source, total: int) -> list[Target]:
    """A fresh database and file store per spec, each served until ``stack`` closes.

    The databases are migrated (and the user added) in parallel, since that is mostly
    starting Python; each client has already asked its server what it speaks, as the
    exporter does.
    """
    configs = []
    for spec in specs:
        spec.workdir.mkdir(parents=True)
        database_url = stack.enter_context(common.fresh_database(kind, spec.workdir / "meteorpi.db"))
        configs.append((database_url, import_handshake.write_config(
            spec.workdir / "server.yaml", database_url, spec.workdir / "files", 1024)))
    with ThreadPoolExecutor(max_workers=len(specs)) as pool:
        list(pool.map(lambda pair: import_handshake.prepare(pair[1], password), configs))
    targets = []
    for spec, (database_url, config) in zip(specs, configs):
        url = stack.enter_context(common.serving(config))
        client = stack.enter_context(ImportClient(f"{url}/import", import_handshake.USER, password))
        client.describe()
        if not client.uses_resumable_uploads:
            raise BenchError(f"{url} does not offer resumable uploads")
        sender = (None if spec.concurrency is None
                  else BatchSender(client, source, concurrency=spec.concurrency))
        targets.append(Target(spec.name, url, database_url, client, sender,
                              next_report=max(1, total // 10),
                              discovery_requests=client.requests_sent))
    return targets


def send_slice(target: Target, entities: list, night: Night, total: int) -> None:
    """Send ``entities`` with the target's protocol, adding to its time and counts."""
    start = time.perf_counter()
    if target.sender is None:
        results = {}
        for entity in entities:
            try:
                results[entity.id] = export_entity(target.client, entity, night.dataset)
            except TargetError as error:
                raise BenchError(f"{target.name}: the server failed: {error}") from error
            target.done += 1
            if target.done >= target.next_report:
                report(target, total, time.perf_counter() - start)
    else:
        try:
            results = target.sender.send(entities, stats=target.stats)
        except TargetError as error:
            raise BenchError(f"{target.name}: the server failed: {error}") from error
        target.done += len(entities)
    target.seconds += time.perf_counter() - start
    if target.sender is not None and target.done >= target.next_report:
        report(target, total, 0.0)
    check_complete(target.name, entities, results)


def report(target: Target, total: int, running: float) -> None:
    seconds = target.seconds + running
    progress(f"  {target.name}: {target.done:,}/{total:,} entities "
             f"({100 * target.done / total:.0f} %), {target.requests:,} requests, "
             f"{target.done / seconds if seconds else 0:,.0f} records/s")
    step = max(1, total // 10)
    target.next_report = (target.done // step + 1) * step


def check_complete(name: str, entities: list, results: dict) -> None:
    failed = [(entity.id, results.get(entity.id)) for entity in entities
              if results.get(entity.id) is None or not results[entity.id].ok]
    if failed:
        entity_id, result = failed[0]
        state = "no result" if result is None else f"{result.state}: {result.message}"
        raise BenchError(f"{name}: {len(failed)} of {len(entities)} entities did not complete; "
                         f"the first, {entity_id.hex}: {state}")


def check_stored(target: Target, night: Night, entities: list) -> None:
    """The server holds exactly the records and bytes of ``entities``."""
    events = [entity for entity in entities if entity.ENTITY_TYPE == "event"]
    files = sum(len(event.files) for event in events) + len(entities) - len(events)
    statuses = {entity.status_id for entity in entities}
    counts = common.row_counts(target.database_url)
    expected = {"events": len(events), "files": files, "blobs": files}
    wrong = {name: (counts[name], value) for name, value in expected.items() if counts[name] != value}
    if wrong or counts["statuses"] < len(statuses):
        raise BenchError(f"{target.name}: the server holds {counts}; expected {expected} and at "
                         f"least {len(statuses)} statuses")


# One database -------------------------------------------------------------------------

def bench_database(kind: str, night: Night, plan: Plan) -> dict[str, float]:
    password = secrets.token_urlsafe(18)
    total = len(night.entities)
    figures: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix=f"meteorpi-batch-bench-{kind}-") as directory, \
            contextlib.ExitStack() as stack:
        progress(f"{kind}: two fresh databases and servers (legacy, v2)")
        legacy, v2 = start_targets(stack, kind, [
            Spec(Path(directory) / "legacy", "legacy", None),
            Spec(Path(directory) / "v2", "v2", DEFAULT_CONCURRENCY)], password, night.dataset, total)
        figures["health_before"] = import_handshake.health_rate(legacy.url, plan.health_requests)
        batch = v2.sender.max_entities
        slices = [night.entities[start:start + batch] for start in range(0, total, batch)]
        progress(f"{kind}: replicating {total:,} entities ({night.events:,} events) in "
                 f"{len(slices)} slices of {batch}, legacy and v2 alternately")
        for index, entities in enumerate(slices):
            order = (legacy, v2) if index % 2 == 0 else (v2, legacy)
            for target in order:
                send_slice(target, entities, night, total)
        for target in (legacy, v2):
            check_stored(target, night, night.entities)
        if v2.stats.fallbacks:
            progress(f"  NOTE: v2 fell back to the legacy handshake for {v2.stats.fallbacks} "
                     "entities")
        for name, target in (("legacy", legacy), ("v2", v2)):
            figures[f"records_{name}"] = total / target.seconds
            figures[f"requests_{name}"] = target.requests / night.events
            progress(f"{kind} {name}: {total:,} entities in {target.seconds:.1f} s, "
                     f"{target.requests:,} requests ({target.requests / target.seconds:,.0f}/s)")
        figures["ratio"] = figures["records_v2"] / figures["records_legacy"]
        figures["nothing_legacy"], sent = nothing_left_legacy(legacy, night)
        progress(f"{kind} legacy, nothing left: {figures['nothing_legacy']:.2f} s, {sent:,} requests")
        figures["nothing_v2"], sent = nothing_left_v2(v2, night)
        progress(f"{kind} v2, nothing left: {figures['nothing_v2']:.3f} s, {sent:,} requests")
        figures["health_after"] = import_handshake.health_rate(legacy.url, plan.health_requests)
    return figures


def nothing_left_legacy(target: Target, night: Night) -> tuple[float, int]:
    before = target.client.requests_sent
    start = time.perf_counter()
    results = {entity.id: export_entity(target.client, entity, night.dataset)
               for entity in night.entities}
    seconds = time.perf_counter() - start
    check_complete("legacy, nothing left", night.entities, results)
    return seconds, target.client.requests_sent - before


def nothing_left_v2(target: Target, night: Night) -> tuple[float, int]:
    stats = BatchStats()
    start = time.perf_counter()
    results = target.sender.send(night.entities, stats=stats)
    seconds = time.perf_counter() - start
    check_complete("v2, nothing left", night.entities, results)
    if stats.files_uploaded or stats.fallbacks:
        progress(f"  NOTE: v2 nothing-left pass uploaded {stats.files_uploaded} files, "
                 f"{stats.fallbacks} fallbacks")
    return seconds, stats.requests


# Concurrency sweep --------------------------------------------------------------------

def concurrency_sweep(night: Night, plan: Plan) -> dict[int, dict[str, float]]:
    entities = night.subset(plan.sweep_events, plan.sweep_files)
    events = sum(1 for entity in entities if entity.ENTITY_TYPE == "event")
    password = secrets.token_urlsafe(18)
    with tempfile.TemporaryDirectory(prefix="meteorpi-batch-bench-sweep-") as directory, \
            contextlib.ExitStack() as stack:
        progress(f"sqlite: v2 concurrency sweep {CONCURRENCIES}, {len(entities):,} entities "
                 f"({events} events), three fresh servers")
        targets = start_targets(stack, "sqlite", [
            Spec(Path(directory) / f"c{concurrency}", f"v2 c={concurrency}", concurrency)
            for concurrency in CONCURRENCIES], password, night.dataset, len(entities))
        # At least one slice per server, so each is sent first, second and last in turn.
        size = min(targets[0].sender.max_entities, -(-len(entities) // len(targets)))
        slices = [entities[start:start + size] for start in range(0, len(entities), size)]
        for index, part in enumerate(slices):
            shift = index % len(targets)
            for target in targets[shift:] + targets[:shift]:
                send_slice(target, part, night, len(entities))
        for target in targets:
            check_stored(target, night, entities)
    rates = {concurrency: len(entities) / target.seconds
             for concurrency, target in zip(CONCURRENCIES, targets)}
    return {concurrency: {"records": rate, "x_default": rate / rates[DEFAULT_CONCURRENCY]
                          if DEFAULT_CONCURRENCY in rates else float("nan"),
                          "requests": target.requests / events}
            for (concurrency, rate), target in zip(rates.items(), targets)}


# Output -------------------------------------------------------------------------------

ROWS = (
    ("records/s, legacy", "records_legacy", "{:,.0f}"),
    ("records/s, v2", "records_v2", "{:,.0f}"),
    ("ratio v2 / legacy", "ratio", "{:.1f}x"),
    ("HTTP requests/event, legacy", "requests_legacy", "{:.2f}"),
    ("HTTP requests/event, v2", "requests_v2", "{:.2f}"),
    ("nothing left, s, legacy", "nothing_legacy", "{:.2f}"),
    ("nothing left, s, v2", "nothing_v2", "{:.3f}"),
)


def print_tables(results: dict[str, dict[str, float]], sweep: dict | None, plan: Plan,
                 night: Night, sweep_size: int) -> None:
    kinds = list(results)
    width = max(len(label) for label, _, _ in ROWS)
    statuses = len(night.dataset.statuses)
    print(f"\nmeteorpi replication, legacy handshake vs protocol v2 (batches, "
          f"concurrency {DEFAULT_CONCURRENCY}): {plan.cameras} cameras, {statuses} statuses, "
          f"{plan.events:,} events x {plan.files_per_event} files of {plan.file_size // 1000} KB "
          f"+ {plan.standalone_files:,} stand-alone files; {common.WORKERS} gthread workers")
    print(f"{'figure':<{width}}" + "".join(f"  {kind:>12}" for kind in kinds))
    print("-" * (width + 14 * len(kinds)))
    for label, name, style in ROWS:
        print(f"{label:<{width}}" + "".join(f"  {style.format(results[kind][name]):>12}"
                                            for kind in kinds))
    print(f"{'(baseline) GET /health req/s':<{width}}" + "".join(
        f"  {results[kind]['health_before']:>5,.0f}->{results[kind]['health_after']:<5,.0f}"
        for kind in kinds) + "   (before -> after the passes)")
    if sweep:
        print(f"\nv2 concurrency on sqlite, {sweep_size:,} entities (x c={DEFAULT_CONCURRENCY}: "
              f"against the current default, same run)")
        print(f"{'concurrency':>11}  {'records/s':>10}  {f'x c={DEFAULT_CONCURRENCY}':>7}  "
              f"{'req/event':>9}")
        for concurrency, figures in sweep.items():
            print(f"{concurrency:>11}  {figures['records']:>10,.0f}  {figures['x_default']:>7.2f}  "
                  f"{figures['requests']:>9.2f}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="100 events and 20 stand-alone files (a couple of minutes for "
                             "both databases)")
    parser.add_argument("--database", choices=("sqlite", "postgresql", "both"),
                        help="default: both if PostgreSQL answers at "
                             "$METEORPI_BENCH_POSTGRES_URL (or the local test server), else sqlite")
    parser.add_argument("--events", type=int, metavar="N", help="events in the night")
    parser.add_argument("--files", type=int, metavar="N", help="stand-alone files in the night")
    parser.add_argument("--no-sweep", action="store_true", help="skip the v2 concurrency sweep")
    arguments = parser.parse_args(argv)
    plan = QUICK if arguments.quick else DEFAULT
    if arguments.events is not None:
        plan = replace(plan, events=arguments.events)
    if arguments.files is not None:
        plan = replace(plan, standalone_files=arguments.files)
    if common.missing_meteorpi():
        return 2

    def measure():
        kinds = common.choose_databases(arguments.database)
        with tempfile.TemporaryDirectory(prefix="meteorpi-batch-bench-night-") as directory:
            progress(f"building the night: {plan.events:,} events x {plan.files_per_event} files "
                     f"+ {plan.standalone_files:,} stand-alone files")
            night = build_night(Path(directory), plan)
            progress(f"  {len(night.dataset.contents):,} files written, "
                     f"{len(night.dataset.statuses)} statuses")
            results = {kind: bench_database(kind, night, plan) for kind in kinds}
            sweep, sweep_size = None, 0
            if not arguments.no_sweep:
                sweep = concurrency_sweep(night, plan)
                sweep_size = len(night.subset(plan.sweep_events, plan.sweep_files))
        return results, sweep, night, sweep_size

    return common.measured(
        measure, lambda figures: print_tables(figures[0], figures[1], plan, *figures[2:]),
        "the servers were stopped and the databases removed")


if __name__ == "__main__":
    sys.exit(main())
