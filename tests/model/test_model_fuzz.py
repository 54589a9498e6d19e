"""Whatever JSON arrives, from_dict either returns a valid object or raises ValidationError.

No KeyError, TypeError, AttributeError, OverflowError or the like may escape:
the server turns ValidationError into a clean "failed" reply and treats
anything else as a crash.
"""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from meteorpi_model import (
    CameraStatus,
    Event,
    EventSearch,
    ExportConfiguration,
    FileRecord,
    FileSearch,
    Location,
    Meta,
    MetaConstraint,
    Orientation,
    Point,
    ValidationError,
)
from model_samples import event_dict, event_search_dict, export_dict, file_dict, file_search_dict, status_dict

# Unbounded ints, NaN and infinities included: Python's json module produces them all.
json_scalars = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=12)
json_values = st.recursive(
    json_scalars,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4),
    max_leaves=12,
)

SAMPLES = [
    pytest.param(Event, event_dict, id="Event"),
    pytest.param(FileRecord, file_dict, id="FileRecord"),
    pytest.param(CameraStatus, status_dict, id="CameraStatus"),
    pytest.param(EventSearch, event_search_dict, id="EventSearch"),
    pytest.param(FileSearch, file_search_dict, id="FileSearch"),
    pytest.param(ExportConfiguration, export_dict, id="ExportConfiguration"),
]
SMALL_CLASSES = [Meta, Location, Orientation, Point, MetaConstraint]
DELETE = object()


def wire_of(entity) -> dict:
    if isinstance(entity, ExportConfiguration):
        return entity.to_dict(include_password=True)
    return entity.to_dict()


def parse_or_refuse(cls, value):
    """from_dict's result, or None if it raised ValidationError (anything else fails the test)."""
    try:
        parsed = cls.from_dict(value, "root")
    except ValidationError as error:
        assert error.path == "root" or error.path.startswith(("root.", "root["))
        return None
    assert cls.from_dict(wire_of(parsed)) == parsed, "whatever is accepted also round-trips"
    return parsed


def locations(value, here=()):
    """Every (container, key) path inside a wire dict."""
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for key, child in items:
        yield here + (key,)
        yield from locations(child, here + (key,))


@given(cls=st.sampled_from(SMALL_CLASSES), value=json_values)
def test_arbitrary_json_value_is_parsed_or_refused_by_the_small_value_classes(cls, value):
    parse_or_refuse(cls, value)


def replace_somewhere(wire: dict, data) -> dict:
    """``wire`` with one field anywhere inside it replaced by junk, or deleted."""
    path = data.draw(st.sampled_from(list(locations(wire))))
    parent = wire
    for key in path[:-1]:
        parent = parent[key]
    junk = data.draw(json_values | st.just(DELETE))
    if junk is DELETE:
        del parent[path[-1]]
    else:
        parent[path[-1]] = junk
    return wire


@pytest.mark.parametrize(("cls", "make_dict"), SAMPLES)
@given(data=st.data())
def test_junk_json_is_parsed_or_refused_with_validation_error_only(cls, make_dict, data):
    """Three kinds of junk: any JSON value, an object with the right keys and
    junk values, and a valid wire dict with one field replaced or deleted."""
    right_keys = st.dictionaries(st.sampled_from(sorted(make_dict())), json_values, max_size=8)
    kind = data.draw(st.sampled_from(["any", "right keys", "one field"]))
    if kind == "any":
        value = data.draw(json_values)
    elif kind == "right keys":
        value = data.draw(right_keys)
    else:
        value = replace_somewhere(make_dict(), data)
    parse_or_refuse(cls, value)
