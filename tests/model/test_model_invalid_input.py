"""Bad input is refused with a ValidationError naming the exact field at fault.

Each case starts from a valid hand-written wire dict, breaks one field, and
states the error path a client would be told.
"""

from __future__ import annotations

import re
import uuid

import pytest

from meteorpi_model import (
    CameraStatus,
    Event,
    EventSearch,
    ExportConfiguration,
    FileRecord,
    FileSearch,
    Meta,
    NSString,
    ValidationError,
    limits,
)
from model_samples import (
    FILE_ID_1,
    event_dict,
    event_search_dict,
    export_dict,
    file_dict,
    file_search_dict,
    status_dict,
)

DELETE = object()
NAN, INF = float("nan"), float("inf")
LONG_NAME = "c" * (limits.MAX_ID_STRING_LENGTH + 1)
LONG_TEXT = "t" * (limits.MAX_STRING_LENGTH + 1)


def changed(wire: dict, path: str, value: object) -> dict:
    """``wire`` with the field at ``path`` (like ``files[0].meta[1].value``) set to ``value`` or deleted."""
    tokens = [int(t[1:-1]) if t.startswith("[") else t for t in re.findall(r"\[\d+\]|[^.\[\]]+", path)]
    parent = wire
    for token in tokens[:-1]:
        parent = parent[token]
    if value is DELETE:
        del parent[tokens[-1]]
    else:
        parent[tokens[-1]] = value
    return wire


def case(make, field, value, error_path=None, *, id):
    return pytest.param(make, field, value, field if error_path is None else error_path, id=id)


def event_with_files(count: int) -> list:
    return [file_dict() | {"file_id": uuid.UUID(int=i).hex} for i in range(count)]


def metas(count: int) -> list:
    return [{"type": "date", "key": "k", "value": 0}] * count


EVENT = (Event, event_dict)
FILE = (FileRecord, file_dict)
STATUS = (CameraStatus, status_dict)
EVENT_SEARCH = (EventSearch, event_search_dict)
FILE_SEARCH = (FileSearch, file_search_dict)
EXPORT = (ExportConfiguration, export_dict)

CASES = [
    # Missing and null required fields.
    case(EVENT, "event_id", DELETE, id="event without event_id"),
    case(EVENT, "event_time", None, id="event with null event_time"),
    case(EVENT, "files", DELETE, id="event without its files list"),
    case(EVENT, "meta", None, id="event with null meta"),
    case(FILE, "semantic_type", DELETE, id="file without semantic_type"),
    case(FILE, "file_size", DELETE, id="file without file_size"),
    case(STATUS, "location", DELETE, id="status without location"),
    case(STATUS, "location.gps", DELETE, id="location without gps"),
    case(STATUS, "regions", DELETE, id="status without regions"),
    case(EVENT, "files[0].meta[2].key", DELETE, id="meta without key"),
    case(EVENT, "meta[0].value", None, id="meta with null value"),
    case(EXPORT, "password", DELETE, id="export configuration without password"),
    case(EXPORT, "search", DELETE, id="export configuration without search"),
    # Wrong types.
    case(EVENT, "camera_id", 42, id="camera_id as a number"),
    case(EVENT, "event_time", "1433001600000", id="time as a string"),
    case(EVENT, "event_time", 1433001600000.0, id="time as a float"),
    case(EVENT, "event_time", True, id="bool where a time is expected"),
    case(FILE, "file_size", False, id="bool where a size is expected"),
    case(STATUS, "software_version", True, id="bool where a version is expected"),
    case(STATUS, "location.lat", True, id="bool where a float is expected"),
    case(STATUS, "location.gps", 1, id="int where a bool is expected"),
    case(STATUS, "orientation.alt", "45", id="float as a string"),
    case(STATUS, "lens", ["Computar"], id="list where an optional string is expected"),
    case(EVENT, "meta[0].value", "0.84", id="number meta with a string value"),
    case(EVENT, "files[0].meta[0].value", 7, id="string meta with a number value"),
    case(EVENT, "files[0].meta[3].value", 1.5, id="date meta with a float value"),
    case(EVENT, "files[0].meta[3].value", True, id="date meta with a bool value"),
    case(EVENT, "meta[0].type", "colour", id="meta of an unknown type"),
    case(EVENT, "meta[0].type", ["number"], id="meta type as a list"),
    case(EXPORT, "enabled", "yes", id="enabled as a string"),
    # Malformed ids and digests.
    case(EVENT, "event_id", "not-an-id", id="malformed event id"),
    case(EVENT, "status_id", "c0ffee00c0ffee00c0ffee00c0ffee0", id="status id one digit short"),
    case(EVENT, "files[1].file_id", {"hex": FILE_ID_1}, id="file id as an object"),
    case(EVENT, "files[0].md5", "d41d8cd98f00b204e9800998ecf8427g", id="md5 with a non-hex digit"),
    case(FILE, "md5", "d41d8cd98f00b204e9800998ecf8427", id="md5 one digit short"),
    case(EXPORT, "config_id", 7, id="config id as a number"),
    # Numbers that are not finite, or out of range.
    case(STATUS, "location.error", NAN, id="NaN"),
    case(STATUS, "orientation.width", INF, id="infinity"),
    case(STATUS, "regions[0][2].y", -INF, id="negative infinity in a region point"),
    case(EVENT, "meta[0].value", NAN, id="NaN as a number meta value"),
    case(STATUS, "orientation.rot", 10**400, id="integer too large for a float"),
    case(EVENT, "meta[0].value", 2**53, id="integer meta value beyond 2**53 - 1"),
    case(FILE, "file_size", -1, id="negative file_size"),
    case(FILE, "file_size", limits.MAX_FILE_SIZE + 1, id="file_size over the limit"),
    case(EVENT, "event_time", -1, id="time before 1970"),
    case(EVENT, "event_time", limits.MAX_TIME_MS + 1, id="time beyond MAX_TIME_MS"),
    case(EVENT, "event_time", 10**5000, id="integer too long to print"),
    case(STATUS, "location.lat", 90.5, id="latitude above 90"),
    case(STATUS, "location.lat", -91, id="latitude below -90"),
    case(STATUS, "location.long", 180.0001, id="longitude above 180"),
    case(STATUS, "software_version", -1, id="negative software version"),
    case(STATUS, "software_version", 2**31, id="software version beyond 32 bits"),
    case(STATUS, "valid_to", 1420070399999, id="status that ends before it starts"),
    # Strings: length, emptiness and forbidden characters.
    case(EVENT, "camera_id", LONG_NAME, id="camera_id over MAX_ID_STRING_LENGTH"),
    case(EVENT, "camera_id", "", id="empty camera_id"),
    case(EVENT, "camera_id", "cam\n1", id="camera_id with a newline"),
    case(EVENT, "camera_id", "cam\x85", id="camera_id with a C1 control character"),
    case(EVENT, "camera_id", "cam\ud800", id="camera_id with a lone surrogate"),
    case(EVENT, "files[0].meta[0].value", LONG_TEXT, id="meta string over MAX_STRING_LENGTH"),
    case(EVENT, "files[0].meta[0].value", "a\x00b", id="meta string with NUL"),
    case(STATUS, "inst_url", LONG_TEXT, id="inst_url over MAX_STRING_LENGTH"),
    case(STATUS, "inst_name", LONG_NAME, id="inst_name over MAX_ID_STRING_LENGTH"),
    case(FILE, "mime_type", "png", id="mime type without subtype"),
    case(FILE, "mime_type", "text/plain; charset=utf-8", id="mime type with parameters"),
    case(FILE, "file_name", "../../etc/passwd", id="file name with a slash"),
    case(FILE, "file_name", "a\\b.png", id="file name with a backslash"),
    case(FILE, "file_name", "..", id="file name '..'"),
    case(FILE, "file_name", "", id="empty file name"),
    case(FILE, "file_name", "f" * 256, id="file name over 255 characters"),
    # Namespaced strings.
    case(EVENT, "event_type", ":movingObject", id="empty namespace"),
    case(EVENT, "event_type", "meteorpi:", id="empty value after the namespace"),
    case(EVENT, "event_type", "", id="empty namespaced string"),
    case(EVENT, "event_type", 5, id="namespaced string as a number"),
    case(FILE, "semantic_type", "ns:" + LONG_NAME, id="namespaced value over the limit"),
    case(EVENT, "files[0].meta[1].key", "bad\tns:key", id="meta key namespace with a tab"),
    # Lists: nesting, counts and duplicates.
    case(EVENT, "files", {"0": file_dict()}, id="files as an object"),
    case(EVENT, "files[1]", "not a file", id="a file that is a string"),
    case(EVENT, "files[0].meta", "none", id="meta as a string"),
    case(EVENT, "meta[0]", [1, 2], id="a meta that is a list"),
    case(STATUS, "regions[0]", {"x": 0, "y": 0}, id="region that is a point, not a list"),
    case(STATUS, "regions[1]", [[0, 0]], "regions[1][0]", id="point as a pair"),
    case(STATUS, "location", [52.2, 0.1], id="location as a list"),
    case(EVENT, "meta", metas(limits.MAX_META_ENTRIES + 1), id="too many meta entries"),
    case(EVENT, "files", event_with_files(limits.MAX_FILES_PER_EVENT + 1), id="too many files"),
    case(STATUS, "regions", [[]] * (limits.MAX_REGIONS + 1), id="too many regions"),
    case(STATUS, "regions[0]", [{"x": 0, "y": 0}] * (limits.MAX_POINTS_PER_REGION + 1), id="too many points"),
    case(EVENT, "files[1].file_id", FILE_ID_1, id="two files of an event with the same id"),
    # Searches and export configurations.
    case(EVENT_SEARCH, "limit", 0, id="search limit 0"),
    case(EVENT_SEARCH, "limit", limits.MAX_SEARCH_LIMIT + 1, id="search limit over MAX_SEARCH_LIMIT"),
    case(FILE_SEARCH, "skip", -1, id="negative skip"),
    case(EVENT_SEARCH, "lat_min", 56.0, "lat_max", id="lat_min above lat_max"),
    case(EVENT_SEARCH, "long_max", 181, id="long_max beyond 180"),
    case(EVENT_SEARCH, "before", 1, id="before earlier than after"),
    case(EVENT_SEARCH, "after_offset", 86401, id="offset beyond a day"),
    case(EVENT_SEARCH, "camera_ids", [], id="empty camera_ids"),
    case(EVENT_SEARCH, "camera_ids[1]", "", id="empty camera id in a search"),
    case(EVENT_SEARCH, "camera_ids", "obs-cambridge-1", id="camera_ids as a string"),
    case(EVENT_SEARCH, "meta_constraints[0].type", "like", id="unknown constraint type"),
    case(EVENT_SEARCH, "meta_constraints[1].value", "240", id="less-than constraint on a string"),
    case(EVENT_SEARCH, "meta_constraints[2].value", -5, id="after constraint before 1970"),
    case(EVENT_SEARCH, "event_type", "x:", id="search with a bad event type"),
    case(FILE_SEARCH, "exclude_events", 1, id="exclude_events as an int"),
    case(FILE_SEARCH, "mime_type", "image", id="search with a bad mime type"),
    case(EXPORT, "type", "camera", id="export configuration of an unknown type"),
    case(EXPORT, "target_url", "ftp://archive.example.org/import", id="target url not http"),
    case(EXPORT, "target_url", "https:///import", id="target url without host"),
    case(EXPORT, "target_url", "http://host:99999/import", id="target url with a bad port"),
    case(EXPORT, "user_id", "cam:bridge", id="user id with a colon"),
    case(EXPORT, "search.limit", 0, id="export search with limit 0"),
    case(EXPORT, "search.event_type", 3, id="export search with a bad event type"),
]


@pytest.mark.parametrize(("make", "field", "value", "error_path"), CASES)
def test_bad_field_is_refused_with_its_path(make, field, value, error_path):
    cls, make_dict = make
    wire = changed(make_dict(), field, value)
    with pytest.raises(ValidationError) as caught:
        cls.from_dict(wire)
    assert caught.value.path == error_path
    assert str(caught.value).startswith(f"{error_path}: ")


@pytest.mark.parametrize(
    ("make", "field", "value"),
    [
        pytest.param(EVENT, "files[0].md5", "nope", id="nested field"),
        pytest.param(EVENT, "event_id", DELETE, id="top-level field"),
        pytest.param(STATUS, "regions[0][1].x", NAN, id="region point"),
    ],
)
def test_error_path_is_prefixed_with_the_path_given(make, field, value):
    cls, make_dict = make
    with pytest.raises(ValidationError) as caught:
        cls.from_dict(changed(make_dict(), field, value), "entity")
    assert caught.value.path == f"entity.{field}"


@pytest.mark.parametrize("cls", [Event, FileRecord, CameraStatus, Meta, EventSearch, FileSearch, ExportConfiguration])
@pytest.mark.parametrize("root", [None, [], "event", 3, 2.5, True], ids=repr)
def test_root_that_is_not_an_object_is_refused_at_the_empty_path(cls, root):
    with pytest.raises(ValidationError) as caught:
        cls.from_dict(root)
    assert caught.value.path == ""
    assert str(caught.value) == "must be an object"


def test_root_that_is_not_an_object_is_refused_at_the_path_given():
    with pytest.raises(ValidationError) as caught:
        Event.from_dict(["not", "an", "event"], "event")
    assert caught.value.path == "event"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (":x", "namespace must not be empty"),
        ("x:", "value must not be empty"),
        ("a\nb:c", "namespace must not contain control characters"),
    ],
)
def test_namespaced_string_errors_name_the_part_at_fault(text, message):
    with pytest.raises(ValidationError) as caught:
        NSString.parse(text, "event_type")
    assert (caught.value.path, caught.value.message) == ("event_type", message)


def test_constructors_validate_like_from_dict():
    with pytest.raises(ValidationError) as caught:
        Meta.number("k", float("nan"))
    assert caught.value.path == "value"
    with pytest.raises(ValidationError) as caught:
        NSString("v", "a:b")
    assert caught.value.message == "namespace must not contain ':'"
    record = FileRecord.from_dict(file_dict())
    with pytest.raises(ValidationError) as caught:
        Event(uuid.uuid4(), "cam", 0, NSString("t"), uuid.uuid4(), files=[record, record])
    assert caught.value.path == "files[1].file_id"
    with pytest.raises(ValidationError) as caught:
        Event(uuid.uuid4(), "cam", 0, "meteorpi:t", uuid.uuid4())
    assert caught.value.path == "event_type"
