"""Benchmark of searches over 10k and 1M events, on SQLite and PostgreSQL.

Run:  .venv/bin/python bench/search.py [--quick] [--database sqlite|postgresql|both]
      [--sizes 10000,1000000] [--repeats 7]

For each database and size, a fresh database is made (a SQLite file in a temporary
directory, or a uniquely named PostgreSQL database created through the ``test``
database and dropped at the end), migrated to the newest schema, and filled directly
through the driver in transactions of 5,000 events (executemany on SQLite, with
synchronous=OFF and a large page cache for the load only; COPY on PostgreSQL). The
secondary indexes are dropped for the load and rebuilt after it, then the tables are
analysed (as autovacuum would on PostgreSQL):

* 20 cameras, each with 2 statuses (lat 50..58, long -5..2), over one year;
* N events: 90% ``meteor``, 9% ``plane``, 1% ``satellite``; each with a ``duration``
  number meta and a ``class`` string meta (5 showers, ``sporadic`` half of them), and
  0.1% with a ``fireball`` number meta; each with one PNG file with one meta;
* N/10 stand-alone files (timelapse JPEGs and MP4 videos).

Then each search is run ``--repeats`` times (after one warm-up run) and its median is
printed, with its ratio to the baseline: the median of loading one event (with its
files and meta) by primary key, measured in the same run on the same database. Searches
ask for a page of 100, newest first, as the API does; "legacy" adds the original API's
total count, and "HTTP" goes through the Flask app (test client, no authentication).
Progress goes to stderr, the table to stdout.
"""
from __future__ import annotations

import argparse
import random
import statistics
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

from flask import Flask
from sqlalchemy import insert, text

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from common import POSTGRES_URL, fresh_database, postgres_problem, progress  # noqa: E402

from meteorpi_model import EventSearch, FileSearch  # noqa: E402
from meteorpi_server import create_app  # noqa: E402
from meteorpi_server.reading import cameras, searches  # noqa: E402
from meteorpi_server.storage import store  # noqa: E402
from meteorpi_server.storage.db import Database  # noqa: E402
from meteorpi_server.storage.orm import Base  # noqa: E402

BATCH = 5000
CAMERAS = 20
START_MS = 1_700_000_000_000
YEAR_MS = 365 * 86_400_000
BIG_TABLES = ("event", "event_meta", "file_record", "file_meta")
SHOWERS = ["sporadic"] * 5 + ["perseid", "geminid", "leonid", "quadrantid"]


# Databases -----------------------------------------------------------------------------

# The data set --------------------------------------------------------------------------

@dataclass
class Statuses:
    """Each camera's two statuses: (status id, latitude, longitude), before and after MID."""

    by_camera: dict[str, list[tuple[uuid.UUID, float, float]]]
    MID = START_MS + YEAR_MS // 2

    def at(self, camera_id: str, time_ms: int) -> uuid.UUID:
        return self.by_camera[camera_id][0 if time_ms < self.MID else 1][0]


def status_rows(rng: random.Random) -> tuple[list[dict], Statuses]:
    rows, by_camera = [], {}
    for index in range(CAMERAS):
        camera_id = f"cam-{index:02d}"
        lat, long = 50 + 8 * index / CAMERAS, -5 + 7 * ((index * 7) % CAMERAS) / CAMERAS
        by_camera[camera_id] = []
        for valid_from, valid_to in ((START_MS, Statuses.MID), (Statuses.MID, None)):
            status_id = uuid.UUID(int=rng.getrandbits(128))
            by_camera[camera_id].append((status_id, lat, long))
            rows.append(dict(
                status_id=status_id, camera_id=camera_id, valid_from=valid_from,
                valid_to=valid_to, software_version=2, latitude=lat, longitude=long, gps=True,
                location_error=1.0, altitude=45.0, azimuth=180.0, orientation_error=0.5,
                rotation=0.0, width=60.0, regions=[], received_at=valid_from))
    return rows, Statuses(by_camera)


def _meta(owner: str, owner_id, position: int, key: str, number=None, string=None) -> dict:
    return {owner: owner_id, "position": position, "key": key,
            "value_type": "string" if string is not None else "number",
            "string_value": string, "number_value": number,
            "number_is_int": False if number is not None else None, "date_value": None}


def event_batches(count: int, statuses: Statuses, rng: random.Random) -> Iterator[dict[str, list]]:
    """Rows for ``count`` events (and their files and meta), a batch at a time."""
    for start in range(0, count, BATCH):
        rows: dict[str, list] = {name: [] for name in BIG_TABLES}
        for _ in range(min(BATCH, count - start)):
            camera_id = f"cam-{rng.randrange(CAMERAS):02d}"
            time_ms = START_MS + rng.randrange(YEAR_MS)
            status_id = statuses.at(camera_id, time_ms)
            event_id, file_id = uuid.UUID(int=rng.getrandbits(128)), uuid.UUID(int=rng.getrandbits(128))
            roll = rng.random()
            event_type = ("meteorpi:satellite" if roll < 0.01 else
                          "meteorpi:plane" if roll < 0.10 else "meteorpi:meteor")
            rows["event"].append(dict(event_id=event_id, camera_id=camera_id, event_time=time_ms,
                                      event_type=event_type, status_id=status_id,
                                      received_at=time_ms + 60_000))
            meta = rows["event_meta"]
            meta.append(_meta("event_id", event_id, 0, "meteorpi:duration",
                              number=round(rng.uniform(0.1, 5.0), 3)))
            meta.append(_meta("event_id", event_id, 1, "meteorpi:class", string=rng.choice(SHOWERS)))
            if rng.random() < 0.001:
                meta.append(_meta("event_id", event_id, 2, "meteorpi:fireball",
                                  number=round(rng.uniform(-8, -3), 2)))
            rows["file_record"].append(_file(file_id, camera_id, time_ms, status_id, "image/png",
                                             "meteorpi:image", event_id))
            rows["file_meta"].append(_meta("file_id", file_id, 0, "meteorpi:brightness",
                                           number=round(rng.uniform(0, 20), 2)))
        yield rows


def standalone_batches(count: int, statuses: Statuses, rng: random.Random) -> Iterator[dict[str, list]]:
    for start in range(0, count, BATCH):
        rows: dict[str, list] = {"file_record": []}
        for _ in range(min(BATCH, count - start)):
            camera_id = f"cam-{rng.randrange(CAMERAS):02d}"
            time_ms = START_MS + rng.randrange(YEAR_MS)
            video = rng.random() < 0.2
            rows["file_record"].append(_file(
                uuid.UUID(int=rng.getrandbits(128)), camera_id, time_ms,
                statuses.at(camera_id, time_ms), "video/mp4" if video else "image/jpeg",
                "meteorpi:video" if video else "meteorpi:timelapse", None))
        yield rows


def _file(file_id, camera_id, time_ms, status_id, mime_type, semantic_type, event_id) -> dict:
    return dict(file_id=file_id, camera_id=camera_id, mime_type=mime_type,
                semantic_type=semantic_type, file_time=time_ms, file_size=200_000,
                status_id=status_id, md5=None, file_name=None, event_id=event_id,
                event_position=0 if event_id else None, received_at=time_ms + 60_000)


class BulkLoader:
    """Rows straight into tables through the driver: executemany of tuples on SQLite,
    COPY on PostgreSQL (7 times faster there than executemany). SQLAlchemy's per-row
    bind processing would take longer than the database for a million rows."""

    def __init__(self, connection, is_sqlite: bool):
        self.connection, self.is_sqlite = connection, is_sqlite

    def load(self, table_name: str, rows: list[dict]) -> int:
        if not rows:
            return 0
        columns = list(rows[0])
        names = ", ".join(columns)
        if self.is_sqlite:
            # Ids as SQLAlchemy's Uuid type stores them in SQLite: 32 hex digits.
            values = [tuple(value.hex if isinstance(value, uuid.UUID) else value
                            for value in row.values()) for row in rows]
            self.connection.exec_driver_sql(
                f"INSERT INTO {table_name} ({names}) VALUES ({', '.join('?' * len(columns))})",
                values)
        else:
            cursor = self.connection.connection.driver_connection.cursor()
            with cursor.copy(f"COPY {table_name} ({names}) FROM STDIN") as copy:
                for row in rows:
                    copy.write_row(tuple(row.values()))
        return len(rows)


def build(url: str, events: int) -> tuple[Database, float]:
    """Migrate and fill the database; returns it and the rows loaded per second."""
    database = Database(url)
    database.upgrade()
    rng = random.Random(events)
    indexes = [index for name in BIG_TABLES for index in Base.metadata.tables[name].indexes]
    started, rows_loaded = time.perf_counter(), 0
    with database.engine.connect() as connection:
        if database.is_sqlite:
            # For the load only: no fsync per batch, and a page cache that holds the
            # primary-key B-trees the random ids land all over.
            # On the driver's connection: SQLAlchemy would open a transaction first.
            raw = connection.connection.driver_connection
            raw.execute("PRAGMA synchronous=OFF")
            raw.execute("PRAGMA cache_size=-524288")
        with connection.begin():
            for index in indexes:
                index.drop(connection)
            statuses_rows, statuses = status_rows(rng)
            connection.execute(insert(Base.metadata.tables["camera_status"]), statuses_rows)
            connection.execute(insert(Base.metadata.tables["camera"]), [
                dict(camera_id=camera_id, first_seen=START_MS, last_seen=START_MS + YEAR_MS,
                     meta={}) for camera_id in statuses.by_camera])
        loader = BulkLoader(connection, database.is_sqlite)
        for number, rows in enumerate(event_batches(events, statuses, rng), 1):
            with connection.begin():
                for name in BIG_TABLES:  # parents before children
                    rows_loaded += loader.load(name, rows[name])
            if number % 40 == 0:
                progress(f"  {number * BATCH:,} events, {rows_loaded:,} rows loaded")
        for rows in standalone_batches(events // 10, statuses, rng):
            with connection.begin():
                rows_loaded += loader.load("file_record", rows["file_record"])
    load_seconds = time.perf_counter() - started
    progress(f"  {rows_loaded:,} rows in {load_seconds:.0f} s; rebuilding indexes")
    with database.engine.begin() as connection:
        for index in indexes:
            index.create(connection)
    # The load went around the store, which keeps the cameras' counts as it stores.
    with database.write() as session:
        cameras.recount(session)
    if database.is_sqlite:
        with database.engine.begin() as connection:
            connection.exec_driver_sql("ANALYZE")
    else:
        with database.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
            connection.exec_driver_sql("VACUUM ANALYZE")
    # Searches get fresh connections with the server's settings, not the loader's.
    database.engine.dispose()
    progress(f"  built in {time.perf_counter() - started:.0f} s")
    return database, rows_loaded / load_seconds


# The searches --------------------------------------------------------------------------

def search_plan(database: Database) -> tuple[list[tuple[str, Callable[[], object]]], Flask]:
    """(name, run once) for each figure, the first being the baseline; and the app the
    HTTP figure uses (dispose of its database afterwards)."""
    with database.read() as session:
        some_event = session.execute(text("SELECT event_id FROM event LIMIT 1 OFFSET 500")).scalar()
    some_event = some_event if isinstance(some_event, uuid.UUID) else uuid.UUID(some_event)
    month = (START_MS + 200 * 86_400_000, START_MS + 230 * 86_400_000)

    def events(criteria: dict, **options) -> Callable[[], object]:
        search = EventSearch.from_dict(criteria)

        def run():
            with database.read() as session:
                return searches.search_events(session, search, **options)
        return run

    def files(criteria: dict) -> Callable[[], object]:
        search = FileSearch.from_dict(criteria)

        def run():
            with database.read() as session:
                return searches.search_files(session, search)
        return run

    def camera_list():
        with database.read() as session:
            return cameras.list_cameras(session, START_MS + YEAR_MS, 3600)

    def by_id():
        with database.read() as session:
            return store.get_event(session, some_event)

    def second_page():
        # The cursor of the first page is taken once; the figure is the page after it.
        return events({"camera_ids": ["cam-07"]}, cursor=first_cursor)()

    with database.read() as session:
        first_cursor = searches.search_events(
            session, EventSearch.from_dict({"camera_ids": ["cam-07"]})).next

    app = create_app({"database_url": str(database.url.render_as_string(hide_password=False)),
                      "read_access": "public", "file_store": tempfile.gettempdir()})
    client = app.test_client()
    http_url = f"/events?camera_id=cam-07&limit=100&cursor={first_cursor.encode()}"

    def http_page():
        response = client.get(http_url)
        assert response.status_code == 200, response.get_data(as_text=True)

    return [
        ("baseline: one event by id", by_id),
        ("newest 100 events", events({})),
        ("camera + one month", events({"camera_ids": ["cam-03"], "after": month[0], "before": month[1]})),
        ("camera + one month, legacy (count)", events(
            {"camera_ids": ["cam-03"], "after": month[0], "before": month[1]}, with_count=True)),
        ("event type 1% (satellite)", events({"event_type": "meteorpi:satellite"})),
        ("event type 9% (plane), legacy (count)", events({"event_type": "meteorpi:plane"},
                                                         with_count=True)),
        ("meta string = perseid (~11%)", events({"meta_constraints": [
            {"type": "string_equals", "key": "meteorpi:class", "value": "perseid"}]})),
        ("meta string = perseid, legacy (count)", events({"meta_constraints": [
            {"type": "string_equals", "key": "meteorpi:class", "value": "perseid"}]},
            with_count=True)),
        ("meta number, rare (0.1% fireball)", events({"meta_constraints": [
            {"type": "less", "key": "meteorpi:fireball", "value": -4}]})),
        ("meta number, camera + month", events({"camera_ids": ["cam-03"], "after": month[0],
                                                "before": month[1], "meta_constraints": [
            {"type": "greater", "key": "meteorpi:duration", "value": 4.5}]})),
        ("time of night 2am-4am", events({"after_offset": 50400, "before_offset": 57600})),
        ("lat/long box (2 of 20 cameras)", events({"lat_min": 52.7, "lat_max": 53.3})),
        ("page 2 by cursor (one camera)", second_page),
        ("HTTP GET /events?camera_id&cursor", http_page),
        ("stand-alone videos", files({"exclude_events": True, "mime_type": "video/mp4"})),
        ("GET /cameras (20, with counts)", camera_list),
    ], app


def measure(run: Callable[[], object], repeats: int) -> float:
    run()  # warm-up: caches, prepared plans
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        run()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


@dataclass
class Result:
    database: str
    events: int
    rows_per_second: float
    figures: list[tuple[str, float]]


def bench_one(kind: str, events: int, repeats: int) -> Result:
    progress(f"{kind}, {events:,} events: building")
    with tempfile.TemporaryDirectory(prefix="meteorpi-bench-search-") as workdir, \
            fresh_database(kind, Path(workdir) / "meteorpi.db", "search") as url:
        database, rate = build(url, events)
        try:
            plan, app = search_plan(database)
            figures = []
            for name, run in plan:
                seconds = measure(run, repeats)
                figures.append((name, seconds))
                progress(f"  {name}: {seconds * 1000:.2f} ms")
            app.extensions["meteorpi"].database.dispose()
        finally:
            database.dispose()
    return Result(kind, events, rate, figures)


def print_table(results: list[Result]) -> None:
    names = [name for name, _ in results[0].figures]
    headers = [f"{result.database} {result.events:,}" for result in results]
    width = max(len(name) for name in names) + 2
    print()
    print("median ms (x baseline)".ljust(width) + "".join(h.rjust(24) for h in headers))
    for index, name in enumerate(names):
        cells = []
        for result in results:
            seconds = result.figures[index][1]
            ratio = seconds / result.figures[0][1]
            cells.append(f"{seconds * 1000:9.2f} ({ratio:7.1f}x)")
        print(name.ljust(width) + "".join(cell.rjust(24) for cell in cells))
    print("load rate, rows/s".ljust(width)
          + "".join(f"{result.rows_per_second:,.0f}".rjust(24) for result in results))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="10k and 100k events, 3 repeats (about a minute)")
    parser.add_argument("--database", choices=("sqlite", "postgresql", "both"))
    parser.add_argument("--sizes", help="comma-separated event counts (default 10000,1000000)")
    parser.add_argument("--repeats", type=int, help="runs per figure (default 7)")
    args = parser.parse_args(argv)
    sizes = [int(size) for size in (args.sizes or ("10000,100000" if args.quick
                                                   else "10000,1000000")).split(",")]
    repeats = args.repeats or (3 if args.quick else 7)
    kinds = ["sqlite", "postgresql"] if args.database in (None, "both") else [args.database]
    if "postgresql" in kinds:
        problem = postgres_problem()
        if problem is not None:
            if args.database in ("postgresql", "both"):
                print(f"PostgreSQL is not reachable at {POSTGRES_URL}: {problem}", file=sys.stderr)
                return 2
            progress(f"PostgreSQL not reachable ({problem}); benchmarking SQLite alone")
            kinds = ["sqlite"]
    results = [bench_one(kind, size, repeats) for kind in kinds for size in sizes]
    print_table(results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
