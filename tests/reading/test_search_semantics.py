"""Every search field means what it meant on the original server, on SQLite and PostgreSQL.

One night of records from three cameras is stored once per database; each row of the
tables below is a search and the records it must find, newest first.
"""
from __future__ import annotations

import uuid

import factories
import pytest
from local_records import fresh_database_url, store_locally
from sqlalchemy import select
from store_queries import count_events, count_files

from meteorpi_model import EventSearch, FileSearch, Location, Meta, NSString
from meteorpi_server.reading import searches
from meteorpi_server.storage.db import Database
from meteorpi_server.storage.orm import EventRow, FileRecordRow

MIDDAY = 1_699_963_200_000  # 2023-11-14 12:00:00 UTC
HOUR = 3_600_000


def at(hours: float) -> int:
    """A time ``hours`` after MIDDAY, so its time of night is ``hours * 3600`` seconds."""
    return MIDDAY + int(hours * HOUR)


class Night:
    """The stored records, by name, and the names of records by id."""

    def __init__(self):
        self.statuses = {
            "north": factories.status("north", MIDDAY - 24 * HOUR,
                                      location=Location(lat=52.2, long=0.12, gps=True, error=1)),
            "south": factories.status("south", MIDDAY - 24 * HOUR,
                                      location=Location(lat=50.1, long=-5.5, gps=True, error=1)),
            "east": factories.status("east", MIDDAY - 24 * HOUR,
                                     location=Location(lat=52.0, long=1.7, gps=False, error=9)),
        }
        self.records: dict[str, object] = {}
        self.names: dict[uuid.UUID, str] = {}

    def event(self, name, camera, time_ms, event_type="meteorpi:meteor", meta=()):
        owner = self.statuses[camera]
        image = factories.file_record(owner, b"frame of " + name.encode(), time_ms,
                                      meta=[Meta.number("meteorpi:brightness", 12.5)])
        self.names[image.file_id] = f"{name}.image"
        record = factories.event(owner, [image], time_ms, event_type=NSString.parse(event_type),
                                 meta=list(meta))
        self._add(name, record)

    def file(self, name, camera, time_ms, mime_type, semantic_type, meta=()):
        record = factories.file_record(self.statuses[camera], b"bytes of " + name.encode(),
                                       time_ms, mime_type=mime_type,
                                       semantic_type=NSString.parse(semantic_type), meta=list(meta))
        self._add(name, record)

    def _add(self, name, record):
        self.records[name] = record
        self.names[record.id] = name


def duration(value):
    return Meta.number("meteorpi:duration", value)


def shower(name):
    return Meta.string("meteorpi:class", name)


def peak(time_ms):
    return Meta.date("meteorpi:peak", time_ms)


def build_night() -> Night:
    night = Night()
    night.event("n_afternoon", "north", at(2),
                meta=[duration(1.0), shower("sporadic"), peak(at(2) + 300)])
    night.event("n_2am", "north", at(14), meta=[duration(2.5), shower("perseid"), peak(at(14) + 300)])
    night.event("n_3am_plane", "north", at(15), event_type="meteorpi:plane",
                meta=[duration(10), shower("sporadic")])
    night.event("s_3am", "south", at(15) + 500, meta=[shower("perseid"), duration(0.5)])
    night.event("e_next_2:30am", "east", at(24 + 14.5), meta=[Meta.number("other:score", 7)])
    night.event("n_next_midday", "north", at(24))
    night.file("n_timelapse", "north", at(16), "image/jpeg", "meteorpi:timelapse")
    night.file("s_video", "south", at(3), "video/mp4", "meteorpi:video",
               meta=[Meta.number("meteorpi:frames", 300)])
    return night


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def stored_night(request, tmp_path_factory):
    """(Database, Night) with the night stored; one per database, shared by the module."""
    if request.param == "sqlite":
        url = fresh_database_url("sqlite", tmp_path_factory.mktemp("night"),
                                 sqlite_template=request.getfixturevalue("sqlite_template"))
    else:
        url = fresh_database_url("postgresql", None,
                                 postgres_url=request.getfixturevalue("postgres_database"))
    database = Database(url)
    night = build_night()
    store_locally(database, *night.statuses.values(), *night.records.values())
    yield database, night
    database.dispose()


EVENTS = ["e_next_2:30am", "n_next_midday", "s_3am", "n_3am_plane", "n_2am", "n_afternoon"]

EVENT_CASES = [
    ({}, EVENTS),
    ({"camera_ids": ["north"]}, ["n_next_midday", "n_3am_plane", "n_2am", "n_afternoon"]),
    ({"camera_ids": ["south", "east"]}, ["e_next_2:30am", "s_3am"]),
    ({"camera_ids": ["nowhere"]}, []),
    # after and before are strict
    ({"after": at(14)}, ["e_next_2:30am", "n_next_midday", "s_3am", "n_3am_plane"]),
    ({"before": at(15)}, ["n_2am", "n_afternoon"]),
    ({"after": at(2), "before": at(15) + 500}, ["n_3am_plane", "n_2am"]),
    # time of night: seconds since the previous midday, strict at both ends
    ({"after_offset": 14 * 3600, "before_offset": 16 * 3600},
     ["e_next_2:30am", "s_3am", "n_3am_plane"]),
    ({"after_offset": 14 * 3600 - 0.001, "before_offset": 14 * 3600 + 0.001}, ["n_2am"]),
    ({"before_offset": 15 * 3600 + 0.5}, [name for name in EVENTS if name != "s_3am"]),
    ({"before_offset": 15 * 3600 + 0.5001}, EVENTS),
    ({"after_offset": 0}, ["e_next_2:30am", "s_3am", "n_3am_plane", "n_2am", "n_afternoon"]),
    # location of the record's camera status, bounds included
    ({"lat_min": 52.0}, ["e_next_2:30am", "n_next_midday", "n_3am_plane", "n_2am", "n_afternoon"]),
    ({"lat_min": 52.1, "lat_max": 90}, ["n_next_midday", "n_3am_plane", "n_2am", "n_afternoon"]),
    ({"lat_max": 51}, ["s_3am"]),
    ({"long_min": 0, "long_max": 1}, ["n_next_midday", "n_3am_plane", "n_2am", "n_afternoon"]),
    ({"long_min": 1.7, "long_max": 1.7}, ["e_next_2:30am"]),
    ({"long_max": -1, "lat_min": 50.1, "lat_max": 50.1}, ["s_3am"]),
    # event type, with or without the default namespace
    ({"event_type": "meteorpi:plane"}, ["n_3am_plane"]),
    ({"event_type": "plane"}, ["n_3am_plane"]),
    ({"event_type": "other:plane"}, []),
    # meta constraints: some entry with the key satisfies it
    ({"meta_constraints": [{"type": "string_equals", "key": "meteorpi:class", "value": "sporadic"}]},
     ["n_3am_plane", "n_afternoon"]),
    ({"meta_constraints": [{"type": "string_equals", "key": "class", "value": "perseid"}]},
     ["s_3am", "n_2am"]),
    ({"meta_constraints": [{"type": "number_equals", "key": "meteorpi:duration", "value": 10.0}]},
     ["n_3am_plane"]),
    ({"meta_constraints": [{"type": "less", "key": "meteorpi:duration", "value": 1}]}, ["s_3am"]),
    ({"meta_constraints": [{"type": "greater", "key": "meteorpi:duration", "value": 2.5}]},
     ["n_3am_plane"]),
    ({"meta_constraints": [{"type": "greater", "key": "other:score", "value": 6}]}, ["e_next_2:30am"]),
    ({"meta_constraints": [{"type": "before", "key": "meteorpi:peak", "value": at(14) + 300}]},
     ["n_afternoon"]),
    ({"meta_constraints": [{"type": "after", "key": "meteorpi:peak", "value": at(2) + 300}]},
     ["n_2am"]),
    # a constraint on another type's value never matches
    ({"meta_constraints": [{"type": "string_equals", "key": "meteorpi:duration", "value": "10"}]}, []),
    ({"meta_constraints": [{"type": "less", "key": "meteorpi:peak", "value": 10 ** 15}]}, []),
    # every criterion must hold
    ({"meta_constraints": [
        {"type": "string_equals", "key": "meteorpi:class", "value": "perseid"},
        {"type": "less", "key": "meteorpi:duration", "value": 1}]}, ["s_3am"]),
    ({"camera_ids": ["north"], "after_offset": 13 * 3600, "event_type": "meteor"}, ["n_2am"]),
    # limit and skip page through the newest-first order
    ({"limit": 2}, EVENTS[:2]),
    ({"limit": 2, "skip": 3}, EVENTS[3:5]),
    ({"skip": 6}, []),
]


@pytest.mark.parametrize("search, expected", EVENT_CASES, ids=[str(case[0]) for case in EVENT_CASES])
def test_event_search(stored_night, search, expected):
    database, night = stored_night
    with database.read() as session:
        page = searches.search_events(session, EventSearch.from_dict(search))
    assert [night.names[event.event_id] for event in page.items] == expected


FILES = ["e_next_2:30am.image", "n_next_midday.image", "n_timelapse", "s_3am.image",
         "n_3am_plane.image", "n_2am.image", "s_video", "n_afternoon.image"]

FILE_CASES = [
    ({}, FILES),
    ({"exclude_events": True}, ["n_timelapse", "s_video"]),
    ({"mime_type": "video/mp4"}, ["s_video"]),
    ({"semantic_type": "meteorpi:timelapse"}, ["n_timelapse"]),
    ({"semantic_type": "timelapse"}, ["n_timelapse"]),
    ({"camera_ids": ["south"]}, ["s_3am.image", "s_video"]),
    ({"after": at(3), "before": at(16)}, ["s_3am.image", "n_3am_plane.image", "n_2am.image"]),
    ({"after_offset": 14 * 3600, "before_offset": 17 * 3600, "exclude_events": True}, ["n_timelapse"]),
    ({"lat_max": 51}, ["s_3am.image", "s_video"]),
    ({"meta_constraints": [{"type": "number_equals", "key": "meteorpi:frames", "value": 300}]},
     ["s_video"]),
    ({"meta_constraints": [{"type": "greater", "key": "meteorpi:brightness", "value": 12}],
      "camera_ids": ["east"]}, ["e_next_2:30am.image"]),
    ({"mime_type": "image/png", "limit": 1, "skip": 1}, ["n_next_midday.image"]),
]


@pytest.mark.parametrize("search, expected", FILE_CASES, ids=[str(case[0]) for case in FILE_CASES])
def test_file_search(stored_night, search, expected):
    database, night = stored_night
    with database.read() as session:
        page = searches.search_files(session, FileSearch.from_dict(search))
    assert [night.names[record.file_id] for record in page.items] == expected


@pytest.mark.parametrize("search, expected", EVENT_CASES[:20], ids=[str(c[0]) for c in EVENT_CASES[:20]])
def test_the_conditions_alone_select_the_same_events(stored_night, search, expected):
    # How the exporter marks tasks: ids only, no ordering or paging.
    database, night = stored_night
    conditions = searches.event_conditions(EventSearch.from_dict(search))
    with database.read() as session:
        ids = session.scalars(select(EventRow.event_id).where(*conditions))
        assert {night.names[event_id] for event_id in ids} == set(expected)


def test_the_file_conditions_alone_select_stand_alone_files(stored_night):
    database, night = stored_night
    conditions = searches.file_conditions(FileSearch(exclude_events=True))
    with database.read() as session:
        ids = session.scalars(select(FileRecordRow.file_id).where(*conditions))
        assert {night.names[file_id] for file_id in ids} == {"n_timelapse", "s_video"}


@pytest.mark.parametrize("search, count", [
    ({"limit": 2}, 6),                    # a full page: counted
    ({"limit": 4, "skip": 4}, 6),         # the last page: known without counting
    ({"skip": 10}, 6),                    # past the end: counted
    ({"camera_ids": ["east"]}, 1),
    ({"camera_ids": ["nowhere"]}, 0),
])
def test_the_count_is_every_match_ignoring_limit_and_skip(stored_night, search, count):
    database, _ = stored_night
    with database.read() as session:
        page = searches.search_events(session, EventSearch.from_dict(search), with_count=True)
        assert page.count == count == count_events(session, EventSearch.from_dict(search))


def _unpaged(cases):
    return [(search, expected) for search, expected in cases
            if "limit" not in search and "skip" not in search]


@pytest.mark.parametrize("search, expected", _unpaged(EVENT_CASES),
                         ids=[str(case[0]) for case in _unpaged(EVENT_CASES)])
def test_the_count_of_every_event_search_is_its_number_of_matches(stored_night, search, expected):
    # A count is planned apart from its page (meta constraints are read the other way
    # round), so it is checked against every search's matches.
    database, _ = stored_night
    with database.read() as session:
        counted = count_events(session, EventSearch.from_dict(search))
        legacy = searches.search_events(session, EventSearch.from_dict({**search, "limit": 1}),
                                         with_count=True)
    assert counted == legacy.count == len(expected)


@pytest.mark.parametrize("search, expected", _unpaged(FILE_CASES),
                         ids=[str(case[0]) for case in _unpaged(FILE_CASES)])
def test_the_count_of_every_file_search_is_its_number_of_matches(stored_night, search, expected):
    database, _ = stored_night
    with database.read() as session:
        counted = count_files(session, FileSearch.from_dict(search))
        legacy = searches.search_files(session, FileSearch.from_dict({**search, "limit": 1}),
                                        with_count=True)
    assert counted == legacy.count == len(expected)
