"""Benchmark: does a flood of wrong passwords slow a legitimate exporter down? (issue 14)

Run:  .venv/bin/python bench/password_guessing.py [--quick] [--seconds S] [--flood-rate R]

A fresh SQLite database (in a temporary directory) is migrated and given an ``import``
user whose password is hashed as the server hashes by default (scrypt), and
``meteorpi serve --workers 2`` (gunicorn, gthread) is started on a free loopback port,
twice: with the default throttle of failed authentications, and with it turned off
(``auth_failures_per_address: 0``, ``auth_failures_per_user: 0``). Against each:

exporter req/s, unloaded
    A legitimate exporter (this process): sequential authenticated ``POST /import`` of
    ``{"type": "cached_entity", "cached_entity_id": <random hex>}`` (answered
    ``continue-nocache`` without touching storage) on one keep-alive ``requests.Session``
    with the right password (verified once, then remembered by the worker), counted over
    S seconds (10 by default, 4 with --quick). The baseline.
exporter req/s, flooded
    The same, while another process sends R wrong-password requests a second (200 by
    default) from 127.0.0.2 (its sockets are bound there; Linux loopback answers every
    127.0.0.0/8 address), to the same route, from 32 threads on kept-alive connections,
    paced evenly (a thread waits for its answer, so a slow server gets fewer). The flood
    starts 2 s before the count and stops after it. "x unloaded" is the flooded rate
    divided by the unloaded one measured just before it: the issue's bar is 0.5.
flood
    What the flood achieved: requests answered per second, and how many were answered
    401 (a password was hashed) and 429 (refused unhashed by the throttle).

Each figure is repeated (2 times, once with --quick) and the table shows medians.
Progress goes to stderr, the table to stdout.
"""
from __future__ import annotations

import argparse
import http.client
import multiprocessing
import secrets
import statistics
import sys
import tempfile
import threading
import time
import uuid
from base64 import b64encode
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import requests
import yaml
from common import (WORKERS, BenchError, measured, meteorpi, missing_meteorpi, progress,
                    record, serving)

USER = "bench"
FLOOD_ADDRESS = "127.0.0.2"
FLOOD_THREADS = 32
FLOOD_WARM_UP_SECONDS = 2.0


@dataclass(frozen=True)
class Plan:
    repeats: int
    seconds: float
    flood_rate: float


QUICK = Plan(repeats=1, seconds=4.0, flood_rate=200.0)
DEFAULT = Plan(repeats=2, seconds=10.0, flood_rate=200.0)


# The flood (another process) ----------------------------------------------------------

def flood(url: str, rate: float, stop, results) -> None:
    """Send ``rate`` wrong-password POST /import requests a second from FLOOD_ADDRESS
    until ``stop`` is set; put (seconds, Counter of statuses) on ``results``."""
    parts = urlsplit(url)
    body = b'{"type": "cached_entity", "cached_entity_id": "' + b"0" * 32 + b'"}'
    headers = {"Content-Type": "application/json",
               "Authorization": "Basic " + b64encode(f"{USER}:not-the-password".encode()).decode()}
    statuses: Counter = Counter()
    lock = threading.Lock()
    slots = iter(range(10**9))
    start = time.perf_counter()

    def connect() -> http.client.HTTPConnection:
        return http.client.HTTPConnection(parts.hostname, parts.port, timeout=30,
                                          source_address=(FLOOD_ADDRESS, 0))

    def worker() -> None:
        connection = connect()
        while not stop.is_set():
            with lock:
                due = start + next(slots) / rate
            wait = due - time.perf_counter()
            if wait > 0:
                time.sleep(wait)
            if stop.is_set():
                break
            try:
                connection.request("POST", "/import", body=body, headers=headers)
                response = connection.getresponse()
                response.read()
                outcome = response.status
                if response.will_close:
                    connection.close()
                    connection = connect()
            except (OSError, http.client.HTTPException):
                outcome = "error"
                connection.close()
                connection = connect()
            with lock:
                statuses[outcome] += 1
        connection.close()

    threads = [threading.Thread(target=worker, daemon=True) for _ in range(FLOOD_THREADS)]
    for thread in threads:
        thread.start()
    stop.wait()
    for thread in threads:
        thread.join(35)
    results.put((time.perf_counter() - start, dict(statuses)))


class Flood:
    """The flood in a process of its own while the ``with`` block runs."""

    def __init__(self, url: str, rate: float):
        context = multiprocessing.get_context("spawn")
        self.stop = context.Event()
        self.results = context.Queue()
        self.process = context.Process(target=flood, args=(url, rate, self.stop, self.results),
                                       daemon=True)
        self.seconds, self.statuses = 0.0, {}

    def __enter__(self) -> Flood:
        self.process.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self.stop.set()
        try:
            self.seconds, self.statuses = self.results.get(timeout=60)
        finally:
            self.process.join(10)
            if self.process.is_alive():
                self.process.kill()

    @property
    def answered_rate(self) -> float:
        answered = sum(count for status, count in self.statuses.items() if status != "error")
        return answered / self.seconds if self.seconds else 0.0


# The exporter -------------------------------------------------------------------------

def exporter_rate(session: requests.Session, url: str, seconds: float) -> float:
    """Requests a second of sequential authenticated POST /import probes for ``seconds``."""
    count = 0
    start = time.perf_counter()
    deadline = start + seconds
    while time.perf_counter() < deadline:
        document = {"type": "cached_entity", "cached_entity_id": uuid.uuid4().hex}
        response = session.post(f"{url}/import", json=document, timeout=120)
        if response.status_code != 200 or response.json().get("state") != "continue-nocache":
            raise BenchError(f"the exporter's POST /import answered {response.status_code}: "
                             f"{response.text[:200]}")
        count += 1
    return count / (time.perf_counter() - start)


def measure(url: str, password: str, plan: Plan, label: str, samples: dict) -> None:
    with requests.Session() as session:
        session.auth = (USER, password)
        exporter_rate(session, url, 0.5)  # verifies the password once, pins the connection
        for repeat in range(1, plan.repeats + 1):
            unloaded = exporter_rate(session, url, plan.seconds)
            with Flood(url, plan.flood_rate) as flooding:
                time.sleep(FLOOD_WARM_UP_SECONDS)
                flooded = exporter_rate(session, url, plan.seconds)
            statuses = flooding.statuses
            record(samples, **{f"{label}_unloaded": unloaded, f"{label}_flooded": flooded,
                               f"{label}_ratio": flooded / unloaded,
                               f"{label}_flood_rate": flooding.answered_rate,
                               f"{label}_flood_401": statuses.get(401, 0),
                               f"{label}_flood_429": statuses.get(429, 0)})
            other = {status: count for status, count in statuses.items() if status not in (401, 429)}
            progress(f"  run {repeat}/{plan.repeats}: exporter {unloaded:,.0f} req/s unloaded, "
                     f"{flooded:,.1f} req/s flooded (x {flooded / unloaded:.2f}); flood answered "
                     f"{flooding.answered_rate:,.0f} req/s: {statuses.get(401, 0)} x 401, "
                     f"{statuses.get(429, 0)} x 429" + (f", other {other}" if other else ""))


# The servers --------------------------------------------------------------------------

def write_config(path: Path, workdir: Path, **settings) -> Path:
    path.write_text(yaml.safe_dump({"database_url": f"sqlite:///{workdir / 'meteorpi.db'}",
                                    "file_store": str(workdir / "files"), "log_level": "warning",
                                    **settings}))
    return path


def run(plan: Plan) -> dict[str, float]:
    samples: dict[str, list[float]] = defaultdict(list)
    password = secrets.token_urlsafe(18)
    with tempfile.TemporaryDirectory(prefix="meteorpi-bench-guessing-") as directory:
        workdir = Path(directory)
        on = write_config(workdir / "throttle-on.yaml", workdir)
        off = write_config(workdir / "throttle-off.yaml", workdir, auth_failures_per_address=0,
                           auth_failures_per_user=0)
        progress(f"migrating a fresh SQLite database and adding user {USER} (scrypt hash)")
        meteorpi(on, "db", "upgrade")
        meteorpi(on, "users", "add", USER, "--role", "import", "--password-stdin",
                 stdin=password + "\n")
        progress(f"throttle on (the defaults), {plan.repeats} run(s) of {plan.seconds:.0f} s")
        with serving(on) as url:
            measure(url, password, plan, "on", samples)
        progress(f"throttle off (auth_failures_per_address: 0, auth_failures_per_user: 0), "
                 f"{plan.repeats} run(s)")
        with serving(off) as url:
            measure(url, password, plan, "off", samples)
    return {name: statistics.median(values) for name, values in samples.items()}


ROWS = (  # (label, figure, format)
    ("exporter req/s, unloaded (baseline)", "on_unloaded", "{:,.0f}"),
    ("exporter req/s, flooded", "on_flooded", "{:,.1f}"),
    ("  x unloaded (bar: 0.5)", "on_ratio", "{:.2f}"),
    ("flood answered, req/s", "on_flood_rate", "{:,.0f}"),
    ("  answered 401 (hashed)", "on_flood_401", "{:,.0f}"),
    ("  answered 429 (refused unhashed)", "on_flood_429", "{:,.0f}"),
)


def print_table(figures: dict[str, float], plan: Plan) -> None:
    width = max(len(label) for label, _, _ in ROWS)
    print(f"\nmeteorpi password guessing benchmark: medians of {plan.repeats} run(s) of "
          f"{plan.seconds:.0f} s; flood of {plan.flood_rate:.0f} wrong passwords/s from "
          f"{FLOOD_ADDRESS}; {WORKERS} gthread workers, scrypt, SQLite")
    print(f"{'figure':<{width}}  {'throttle on':>12}  {'throttle off':>12}")
    print("-" * (width + 28))
    for label, name, style in ROWS:
        print(f"{label:<{width}}  {style.format(figures[name]):>12}  "
              f"{style.format(figures[name.replace('on_', 'off_', 1)]):>12}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="one run of 4 s each (about 40 s)")
    parser.add_argument("--seconds", type=float, metavar="S", help="length of each measurement")
    parser.add_argument("--repeats", type=int, metavar="N", help="runs of each figure")
    parser.add_argument("--flood-rate", type=float, metavar="R",
                        help="wrong-password requests a second (default 200)")
    arguments = parser.parse_args(argv)
    plan = QUICK if arguments.quick else DEFAULT
    plan = Plan(repeats=arguments.repeats or plan.repeats, seconds=arguments.seconds or plan.seconds,
                flood_rate=arguments.flood_rate or plan.flood_rate)
    if missing_meteorpi():
        return 2
    return measured(lambda: run(plan), lambda figures: print_table(figures, plan),
                    "the servers were stopped")


if __name__ == "__main__":
    sys.exit(main())
