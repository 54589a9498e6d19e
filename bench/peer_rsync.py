"""Benchmark against the peer users compare us with: rsync, moving the same night.

Run:  .venv/bin/python bench/peer_rsync.py [--quick] [--database sqlite|postgresql|both]

For each database a camera node is made once: a fresh database and file store filled by
``meteorpi demo-data``'s generator (the Recorder, as a camera writes them) with two
data sets, each a night of its own:

small files
    5 cameras x (120 events x 3 files + 20 stand-alone files) of 20 KiB: 700 entities,
    1,900 files, 38.9 MB (--quick: 5 x (24 x 3 + 4), 140 entities, 380 files).
large files
    1 camera, 5 events x 3 files + 5 stand-alone files of 50 MiB: 20 files, 1 GiB
    (--quick: 1 event x 3 + 1, 4 files).

Each repetition of a data set runs, in an order that rotates from one repetition to the
next (so a drift in the machine's speed favours no one):

meteorpi
    A fresh central server (``meteorpi serve --workers 2``, a fresh database and file
    store, an ``import`` user) is started; two export configurations (the night's events,
    its stand-alone files) targeting it are added to the node's database; then the node
    runs the real command, ``meteorpi --config node.yaml export run --once``, as a
    subprocess, timed by its wall time (Python's start-up, marking, describing the
    target and sending everything with protocol v2). Afterwards the central database
    must hold every event and file record of the night and the central file store every
    file, at its size: the run fails otherwise.
rsync
    ``rsync -a <node file store>/ rsync://127.0.0.1:PORT/bench/``, timed by the client's
    wall time, to an rsync daemon (``rsync --daemon --no-detach``, ``use chroot = no``,
    as the current user) whose module is a fresh empty directory. Afterwards every file
    must be there at its size.
rsync --fsync (the floor)
    The same with ``--fsync``: rsync's files made durable one by one, the cheapest
    durable copy of the bytes the tools here offer (still no records and no md5 check).
    Skipped with ``--no-floor``.

Before each timed run the page cache is written out (``sync``), so no one pays for the
flush of another's files (rsync leaves its files unwritten; meteorpi's syncfs makes the
whole file system durable).

Rates are file bytes (the records' sizes) per second of wall time; "ours / rsync" is
meteorpi's rate over rsync's in the same repetition; the table shows medians over the
repetitions (3, 1 with --quick) and the range of the ratio. The issue's targets: 1.0x
rsync for the small-file night, 0.5x for large files. Progress goes to stderr, the table
to stdout. Everything is made in temporary directories (PostgreSQL: databases named
``meteorpi_bench_peer_*``) and removed at the end.
"""
from __future__ import annotations

import argparse
import contextlib
import os
import secrets
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Iterator

import yaml
from sqlalchemy import create_engine, func, select
from common import (METEORPI, WORKERS, BenchError, choose_databases, free_port, fresh_database,
                    log_tail, measured, meteorpi, missing_meteorpi, progress, record, serving)
from export import USER, Node

from meteorpi_server.node.demo import DemoPlan
from meteorpi_server.storage.orm import EventRow, FileRecordRow

RSYNC = os.environ.get("METEORPI_BENCH_RSYNC", shutil.which("rsync") or "/usr/bin/rsync")
MiB = 1 << 20


@dataclass(frozen=True)
class DataSet:
    key: str
    label: str
    night: DemoPlan
    target: float  # the aim for ours / rsync


@dataclass(frozen=True)
class Plan:
    repeats: int
    sets: tuple[DataSet, ...]


SMALL = DataSet("small", "small-file night", DemoPlan(
    cameras=5, nights=1, events_per_night=120, files_per_event=3, standalone_files=20,
    file_size=20 * 1024), 1.0)
LARGE = DataSet("large", "large files", DemoPlan(
    cameras=1, nights=1, events_per_night=5, files_per_event=3, standalone_files=5,
    file_size=50 * MiB), 0.5)
DEFAULT = Plan(repeats=3, sets=(SMALL, LARGE))
QUICK = Plan(repeats=1, sets=(
    replace(SMALL, night=replace(SMALL.night, events_per_night=24, standalone_files=4)),
    replace(LARGE, night=replace(LARGE.night, events_per_night=1, standalone_files=1))))


# The node's data sets -------------------------------------------------------------------------

@dataclass
class Night:
    data: DataSet
    window: tuple[int, int]
    events: int
    standalone: int
    files: dict[str, int]  # file id (hex) -> size

    @property
    def entities(self) -> int:
        return self.events + self.standalone

    @property
    def file_bytes(self) -> int:
        return sum(self.files.values())


def record_night(node: Node, number: int, data: DataSet) -> Night:
    started = time.perf_counter()
    window = node.record_night(number, data.night)
    with node.database.read() as session:
        in_window = (FileRecordRow.file_time >= window[0], FileRecordRow.file_time < window[1])
        files = {file_id.hex: size for file_id, size in session.execute(
            select(FileRecordRow.file_id, FileRecordRow.file_size).where(*in_window))}
        events = session.scalar(select(func.count()).select_from(EventRow).where(
            EventRow.event_time >= window[0], EventRow.event_time < window[1]))
        standalone = session.scalar(select(func.count()).select_from(FileRecordRow).where(
            FileRecordRow.event_id.is_(None), *in_window))
    night = Night(data, window, events, standalone, files)
    progress(f"  {night.entities} entities, {len(files):,} files, "
             f"{night.file_bytes / 1e6:,.1f} MB recorded in {time.perf_counter() - started:.1f} s")
    return night


# meteorpi: export run --once to a fresh central server ---------------------------------------

def settle() -> None:
    """Write out everything waiting in the page cache before a timed run. rsync leaves the
    files it wrote there, and meteorpi's syncfs makes the whole file system durable, so
    without this whoever runs next pays for the flush of the other's files (rsync's time
    was bimodal, 0.2 s or 2 s, with it), and each starts from the same state."""
    os.sync()


def run_meteorpi(kind: str, node: Node, node_config: Path, night: Night, workdir: Path,
                 repeat: int) -> float:
    password = secrets.token_urlsafe(18)
    central = workdir / f"central-{night.data.key}-{repeat}"
    central.mkdir()
    try:
        with fresh_database(kind, central / "central.db", "peer_central") as central_url:
            config = central / "central.yaml"
            config.write_text(yaml.safe_dump({
                "database_url": central_url, "file_store": str(central / "files"),
                "log_level": "warning"}))
            meteorpi(config, "db", "upgrade")
            meteorpi(config, "users", "add", USER, "--role", "import", "--password-stdin",
                     stdin=password + "\n")
            with serving(config) as url:
                node.disable_all()
                node.add_exports(f"{night.data.key}{repeat}-{secrets.token_hex(2)}", url, password,
                                 night.window)
                node.database.dispose()  # the subprocess is the node's only user while timed
                settle()
                start = time.perf_counter()
                completed = subprocess.run(
                    [str(METEORPI), "--config", str(node_config), "export", "run", "--once"],
                    capture_output=True, text=True, timeout=1800)
                seconds = time.perf_counter() - start
                if completed.returncode != 0:
                    raise BenchError(f"export run --once failed ({completed.returncode}):\n"
                                     f"{completed.stdout}{completed.stderr}")
                summary = " | ".join(line.strip() for line in completed.stdout.splitlines()
                                     if line.strip())
                progress(f"    export run --once said: {summary[:300]}")
            check_central(central_url, central / "files", night)
    finally:
        shutil.rmtree(central, ignore_errors=True)
    return seconds


def check_central(url: str, files: Path, night: Night) -> None:
    """The central server holds every record and every file of the night."""
    engine = create_engine(url)
    try:
        with engine.connect() as connection:
            events = connection.scalar(select(func.count()).select_from(EventRow))
            stored = {file_id.hex for file_id in connection.scalars(select(FileRecordRow.file_id))}
    finally:
        engine.dispose()
    if events != night.events or stored != set(night.files):
        raise BenchError(f"the central server holds {events} events and {len(stored)} file "
                         f"records, not {night.events} and {len(night.files)}")
    check_files(files, night, "the central file store")


def check_files(root: Path, night: Night, where: str) -> None:
    for name, size in night.files.items():
        try:
            held = (root / name[:2] / name).stat().st_size
        except FileNotFoundError:
            raise BenchError(f"{where} lacks file {name}") from None
        if held != size:
            raise BenchError(f"{where} holds {held} bytes of file {name}, not {size}")


def cli_startup(node_config: Path) -> float:
    """Wall time of ``meteorpi --config node.yaml export list``: the command's start-up
    (Python, imports, configuration, opening the database), part of every export run."""
    start = time.perf_counter()
    completed = subprocess.run([str(METEORPI), "--config", str(node_config), "export", "list"],
                               capture_output=True, text=True, timeout=120)
    seconds = time.perf_counter() - start
    if completed.returncode != 0:
        raise BenchError(f"export list failed ({completed.returncode}):\n{completed.stderr}")
    return seconds


# rsync: to a daemon on loopback ---------------------------------------------------------------

@contextlib.contextmanager
def rsync_daemon(directory: Path, name: str) -> Iterator[str]:
    """An rsync daemon on a free loopback port whose module ``bench`` is ``directory``
    (fresh and empty); yields the module's URL."""
    target = directory / f"{name}-target"
    target.mkdir()
    config = directory / f"{name}-rsyncd.conf"
    log = directory / f"{name}-rsyncd.log"
    # As the current user (a daemon started by root would otherwise switch to nobody).
    config.write_text(f"use chroot = no\nuid = {os.getuid()}\ngid = {os.getgid()}\n"
                      f"log file = {log}\n\n"
                      f"[bench]\npath = {target}\nread only = no\n")
    port = free_port()
    process = subprocess.Popen([RSYNC, "--daemon", "--no-detach", f"--config={config}",
                                f"--port={port}", "--address=127.0.0.1"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 20
        while True:
            if process.poll() is not None:
                raise BenchError(f"the rsync daemon exited ({process.returncode}):\n{log_tail(log)}")
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1):
                break
            if time.monotonic() > deadline:
                raise BenchError("the rsync daemon did not listen within 20 s")
            time.sleep(0.05)
        yield f"rsync://127.0.0.1:{port}/bench/"
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        shutil.rmtree(target, ignore_errors=True)


def run_rsync(node_files: Path, night: Night, workdir: Path, repeat: int,
              fsync: bool = False) -> float:
    name = f"rsync-{night.data.key}-{repeat}" + ("-fsync" if fsync else "")
    with rsync_daemon(workdir, name) as module:
        command = [RSYNC, "-a", *(["--fsync"] if fsync else []), f"{node_files}/", module]
        settle()
        start = time.perf_counter()
        completed = subprocess.run(command, capture_output=True, text=True, timeout=1800)
        seconds = time.perf_counter() - start
        if completed.returncode != 0:
            raise BenchError(f"{' '.join(command)} failed ({completed.returncode}):\n"
                             + "\n".join((completed.stdout + completed.stderr).splitlines()[-15:]))
        check_files(workdir / f"{name}-target", night, "the rsync target")
    return seconds


# One database ---------------------------------------------------------------------------------

def bench_database(kind: str, plan: Plan, floor: bool) -> dict[str, dict[str, float]]:
    """Each data set on a node of its own, so that rsync sends the node's whole file store."""
    results = {}
    for number, data in enumerate(plan.sets):
        with tempfile.TemporaryDirectory(prefix=f"meteorpi-bench-peer-{kind}-") as directory, \
                fresh_database(kind, Path(directory) / "node.db", "peer_node") as node_url:
            workdir = Path(directory)
            node_files = workdir / "node-files"
            node_config = workdir / "node.yaml"
            node_config.write_text(yaml.safe_dump({
                "database_url": node_url, "file_store": str(node_files), "log_level": "warning"}))
            progress(f"{kind}: recording the node's {data.label}")
            node = Node(node_url, node_files)
            try:
                night = record_night(node, number, data)
                results[data.key] = bench_night(kind, node, node_config, node_files, night,
                                                workdir, plan, floor)
            finally:
                node.database.dispose()
    return results


def bench_night(kind: str, node: Node, node_config: Path, store: Path, night: Night,
                workdir: Path, plan: Plan, floor: bool) -> dict[str, float]:
    samples: dict[str, list[float]] = defaultdict(list)
    runners = {"ours": lambda repeat: run_meteorpi(kind, node, node_config, night, workdir, repeat),
               "rsync": lambda repeat: run_rsync(store, night, workdir, repeat)}
    if floor:
        runners["floor"] = lambda repeat: run_rsync(store, night, workdir, repeat, fsync=True)
    names = list(runners)
    progress(f"{kind}, {night.data.label}: {plan.repeats} repetition(s) of {', '.join(names)}")
    for repeat in range(plan.repeats):
        shift = repeat % len(names)
        order = names[shift:] + names[:shift]
        seconds = {}
        for name in order:
            seconds[name] = runners[name](repeat)
            progress(f"  run {repeat + 1}/{plan.repeats}: {name} {seconds[name]:.2f} s, "
                     f"{night.file_bytes / seconds[name] / 1e6:,.1f} MB/s")
        values = {f"{name}_mb": night.file_bytes / seconds[name] / 1e6 for name in names}
        values["ours_seconds"] = seconds["ours"]
        values["rsync_seconds"] = seconds["rsync"]
        values["startup_seconds"] = cli_startup(node_config)
        values["ours_entities"] = night.entities / seconds["ours"]
        values["x_rsync"] = seconds["rsync"] / seconds["ours"]
        if floor:
            values["x_floor"] = seconds["floor"] / seconds["ours"]
            values["floor_x_rsync"] = seconds["rsync"] / seconds["floor"]
        record(samples, **values)
        progress(f"  run {repeat + 1}: ours / rsync {values['x_rsync']:.2f}"
                 + (f", ours / rsync --fsync {values['x_floor']:.2f}" if floor else ""))
    figures = {name: statistics.median(values) for name, values in samples.items()}
    for name in ("x_rsync", "x_floor"):
        if name in samples:
            figures[name + "_low"], figures[name + "_high"] = min(samples[name]), max(samples[name])
    return figures


# Output ---------------------------------------------------------------------------------------

def ratio(figures: dict, name: str) -> str:
    if name not in figures:
        return "-"
    return f"{figures[name]:.2f} ({figures[name + '_low']:.2f}-{figures[name + '_high']:.2f})"


def print_table(results: dict[str, dict[str, dict]], plan: Plan, floor: bool) -> None:
    print(f"\nmeteorpi against rsync: medians of {plan.repeats} repetition(s), everything on "
          f"loopback; target: meteorpi serve, {WORKERS} gthread workers")
    for data in plan.sets:
        night = data.night
        files = night.cameras * (night.events_per_night * night.files_per_event
                                 + night.standalone_files)
        entities = night.cameras * (night.events_per_night + night.standalone_files)
        size = (f"{night.file_size // MiB} MiB" if night.file_size >= MiB
                else f"{night.file_size // 1024} KiB")
        print(f"- {data.label}: {entities} entities, {files:,} files of {size} "
              f"(target: ours / rsync >= {data.target:g})")
    columns = [(kind, data) for kind in results for data in plan.sets]
    heads = [f"{data.key} {kind}" for kind, data in columns]
    rows = [("rsync -a to a daemon, MB/s", lambda f: f"{f['rsync_mb']:,.1f}"),
            ("meteorpi export run --once, MB/s", lambda f: f"{f['ours_mb']:,.1f}"),
            ("meteorpi, entities/s", lambda f: f"{f['ours_entities']:,.1f}"),
            ("wall time, s: rsync / meteorpi", lambda f: f"{f['rsync_seconds']:.2f} / {f['ours_seconds']:.2f}"),
            ("  meteorpi CLI start-up (export list), s", lambda f: f"{f['startup_seconds']:.2f}"),
            ("ours / rsync (range)", lambda f: ratio(f, "x_rsync"))]
    if floor:
        rows += [("rsync -a --fsync (floor), MB/s", lambda f: f"{f['floor_mb']:,.1f}"),
                 ("ours / rsync --fsync (range)", lambda f: ratio(f, "x_floor")),
                 ("rsync --fsync / rsync", lambda f: f"{f['floor_x_rsync']:.2f}")]
    width = max(len(label) for label, _ in rows)
    cell = max(18, *(len(head) for head in heads))
    print(f"{'figure':<{width}}" + "".join(f"  {head:>{cell}}" for head in heads))
    print("-" * (width + (cell + 2) * len(heads)))
    for label, show in rows:
        print(f"{label:<{width}}" + "".join(f"  {show(results[kind][data.key]):>{cell}}"
                                            for kind, data in columns))
    print("\nrsync moves only the files. meteorpi also moves the records (events, files, "
          "camera statuses and their meta, into the central database), verifies every "
          "file's md5 and makes everything durable (fsync) before acknowledging"
          + (", where `rsync --fsync` makes durable only the files" if floor else "")
          + ". MB/s counts file bytes only; compare the ratios, the absolute figures are "
          "noisy on this machine.", flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="one repetition of smaller data")
    parser.add_argument("--database", choices=("sqlite", "postgresql", "both"),
                        help="default: both if PostgreSQL answers, else sqlite")
    parser.add_argument("--repeats", type=int, metavar="R", help="repetitions of every figure")
    parser.add_argument("--only", choices=("small", "large"), help="one data set only")
    parser.add_argument("--no-floor", action="store_true", help="skip rsync --fsync")
    arguments = parser.parse_args(argv)
    plan = QUICK if arguments.quick else DEFAULT
    if arguments.repeats:
        plan = replace(plan, repeats=arguments.repeats)
    if arguments.only:
        plan = replace(plan, sets=tuple(data for data in plan.sets if data.key == arguments.only))
    if missing_meteorpi():
        return 2
    if not Path(RSYNC).exists():
        print(f"error: no rsync at {RSYNC} (set METEORPI_BENCH_RSYNC)", file=sys.stderr)
        return 2
    def measure():
        databases = choose_databases(None if arguments.database == "both" else arguments.database)
        return {kind: bench_database(kind, plan, not arguments.no_floor) for kind in databases}

    return measured(measure, lambda results: print_table(results, plan, not arguments.no_floor),
                    "the servers were stopped and the databases removed")


if __name__ == "__main__":
    sys.exit(main())
