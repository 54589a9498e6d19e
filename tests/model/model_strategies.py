"""Hypothesis strategies for valid model objects: every value inside every limit.

Imported by the test modules next to it as ``from model_strategies import ...``
(pytest puts this directory on sys.path, as the tests have no __init__.py).
"""

from __future__ import annotations

from hypothesis import strategies as st

from meteorpi_model import (
    CONSTRAINT_TYPES,
    CameraStatus,
    Event,
    EventSearch,
    ExportConfiguration,
    FileRecord,
    FileSearch,
    Location,
    Meta,
    MetaConstraint,
    NSString,
    Orientation,
    Point,
    md5_bytes,
)
from meteorpi_model import limits

# Names refuse control characters; free text only refuses NUL. Neither may
# hold lone surrogates, which cannot be encoded as UTF-8.
NAME_CHARS = st.characters(exclude_categories=("Cs", "Cc"))
NAMESPACE_CHARS = st.characters(exclude_categories=("Cs", "Cc"), exclude_characters=":")
FILE_NAME_CHARS = st.characters(exclude_categories=("Cs", "Cc"), exclude_characters="/\\")
TEXT_CHARS = st.characters(exclude_categories=("Cs",), exclude_characters="\x00")

# Kept short so the suite stays fast; the limits themselves are tested
# at their boundaries in test_model_invalid_input.py.
names = st.text(NAME_CHARS, min_size=1, max_size=24)
free_text = st.text(TEXT_CHARS, max_size=24)
camera_ids = names
times = st.integers(0, limits.MAX_TIME_MS)
ids = st.uuids()
md5s = st.binary(max_size=64).map(md5_bytes)


def numbers(low: float | None = None, high: float | None = None) -> st.SearchStrategy:
    """Finite ints and floats, kept as their own Python type."""
    int_low = -limits.MAX_SAFE_INTEGER if low is None else int(low)
    int_high = limits.MAX_SAFE_INTEGER if high is None else int(high)
    return st.integers(int_low, int_high) | st.floats(low, high, allow_nan=False, allow_infinity=False)


def optional(strategy: st.SearchStrategy) -> st.SearchStrategy:
    return st.none() | strategy


ns_strings = st.builds(
    NSString,
    value=st.text(NAME_CHARS, min_size=1, max_size=24),
    namespace=st.text(NAMESPACE_CHARS, min_size=1, max_size=12),
) | st.builds(NSString, value=st.text(NAME_CHARS, min_size=1, max_size=24))

metas = st.one_of(
    st.builds(Meta.string, ns_strings, free_text),
    st.builds(Meta.number, ns_strings, numbers()),
    st.builds(Meta.date, ns_strings, times),
)
meta_lists = st.lists(metas, max_size=4)

# st.builds rather than st.from_regex: compiling a regex strategy costs seconds.
LOWER = "abcdefghijklmnopqrstuvwxyz"
mime_types = st.sampled_from(["image/png", "video/mp4", "application/octet-stream"]) | st.builds(
    "{}/{}".format, st.text(LOWER, min_size=1, max_size=10), st.text(LOWER + "0123456789-+.", min_size=1, max_size=20)
)
file_names = st.text(FILE_NAME_CHARS, min_size=1, max_size=24).filter(
    lambda name: name not in (".", "..")
)

file_records = st.builds(
    FileRecord,
    file_id=ids,
    camera_id=camera_ids,
    mime_type=mime_types,
    semantic_type=ns_strings,
    file_time=times,
    file_size=st.integers(0, limits.MAX_FILE_SIZE),
    status_id=ids,
    md5=optional(md5s),
    file_name=optional(file_names),
    meta=meta_lists,
)

events = st.builds(
    Event,
    event_id=ids,
    camera_id=camera_ids,
    event_time=times,
    event_type=ns_strings,
    status_id=ids,
    files=st.lists(file_records, max_size=4, unique_by=lambda f: f.file_id),
    meta=meta_lists,
)

locations = st.builds(Location, lat=numbers(-90, 90), long=numbers(-180, 180), gps=st.booleans(), error=numbers())
orientations = st.builds(Orientation, alt=numbers(), az=numbers(), error=numbers(), rot=numbers(), width=numbers())
points = st.builds(Point, x=numbers(), y=numbers())
regions = st.lists(st.lists(points, max_size=5), max_size=3)


@st.composite
def ordered_pair(draw, values: st.SearchStrategy) -> tuple:
    """Two optional values; when both are present the first is not larger."""
    low, high = draw(optional(values)), draw(optional(values))
    if low is not None and high is not None and high < low:
        low, high = high, low
    return low, high


@st.composite
def camera_statuses(draw) -> CameraStatus:
    valid_from = draw(times)
    return CameraStatus(
        camera_id=draw(camera_ids),
        status_id=draw(ids),
        valid_from=valid_from,
        software_version=draw(st.integers(0, limits.MAX_SOFTWARE_VERSION)),
        location=draw(locations),
        orientation=draw(orientations),
        valid_to=draw(optional(st.integers(valid_from, limits.MAX_TIME_MS))),
        lens=draw(optional(free_text)),
        sensor=draw(optional(free_text)),
        inst_url=draw(optional(free_text)),
        inst_name=draw(optional(names)),
        regions=draw(regions),
    )


@st.composite
def meta_constraints(draw) -> MetaConstraint:
    constraint_type = draw(st.sampled_from(CONSTRAINT_TYPES))
    if constraint_type == "string_equals":
        value = draw(free_text)
    elif constraint_type in ("before", "after"):
        value = draw(times)
    else:
        value = draw(numbers())
    return MetaConstraint(constraint_type, draw(ns_strings), value)


@st.composite
def _shared_criteria(draw) -> dict:
    lat_min, lat_max = draw(ordered_pair(numbers(-90, 90)))
    long_min, long_max = draw(ordered_pair(numbers(-180, 180)))
    after, before = draw(ordered_pair(times))
    after_offset, before_offset = draw(ordered_pair(numbers(0, limits.SECONDS_PER_DAY)))
    return {
        "camera_ids": draw(optional(st.lists(camera_ids, min_size=1, max_size=3))),
        "lat_min": lat_min,
        "lat_max": lat_max,
        "long_min": long_min,
        "long_max": long_max,
        "after": after,
        "before": before,
        "after_offset": after_offset,
        "before_offset": before_offset,
        "meta_constraints": draw(st.lists(meta_constraints(), max_size=3)),
        "limit": draw(st.integers(1, limits.MAX_SEARCH_LIMIT)),
        "skip": draw(st.integers(0, limits.MAX_SAFE_INTEGER)),
    }


@st.composite
def event_searches(draw) -> EventSearch:
    return EventSearch(event_type=draw(optional(ns_strings)), **draw(_shared_criteria()))


@st.composite
def file_searches(draw) -> FileSearch:
    return FileSearch(
        mime_type=draw(optional(mime_types)),
        semantic_type=draw(optional(ns_strings)),
        exclude_events=draw(st.booleans()),
        **draw(_shared_criteria()),
    )


target_urls = st.builds(
    "{}://{}{}/import".format,
    st.sampled_from(["http", "https"]),
    st.builds(".".join, st.lists(st.text(LOWER + "0123456789", min_size=1, max_size=12), min_size=1, max_size=3)),
    st.sampled_from(["", ":80", ":8443"]),
)

export_configurations = st.builds(
    ExportConfiguration,
    config_id=ids,
    name=names,
    target_url=target_urls,
    user_id=st.text(NAMESPACE_CHARS, min_size=1, max_size=24),
    password=st.text(TEXT_CHARS, max_size=64),
    search=event_searches() | file_searches(),
    enabled=st.booleans(),
    description=free_text,
)
