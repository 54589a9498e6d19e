"""Every valid object survives to_dict -> JSON -> from_dict unchanged."""

from __future__ import annotations

import json

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
    NSString,
    Orientation,
    Point,
)
from model_strategies import (
    camera_statuses,
    event_searches,
    events,
    export_configurations,
    file_records,
    file_searches,
    locations,
    meta_constraints,
    metas,
    ns_strings,
    orientations,
    points,
)

ROUND_TRIPS = [
    pytest.param(Event, events, id="Event"),
    pytest.param(FileRecord, file_records, id="FileRecord"),
    pytest.param(CameraStatus, camera_statuses(), id="CameraStatus"),
    pytest.param(Meta, metas, id="Meta"),
    pytest.param(Location, locations, id="Location"),
    pytest.param(Orientation, orientations, id="Orientation"),
    pytest.param(Point, points, id="Point"),
    pytest.param(MetaConstraint, meta_constraints(), id="MetaConstraint"),
    pytest.param(EventSearch, event_searches(), id="EventSearch"),
    pytest.param(FileSearch, file_searches(), id="FileSearch"),
]


@pytest.mark.parametrize(("cls", "strategy"), ROUND_TRIPS)
@given(data=st.data())
def test_wire_dict_survives_strict_json_and_parses_back_to_an_equal_object(cls, strategy, data):
    original = data.draw(strategy)
    text = json.dumps(original.to_dict(), allow_nan=False)
    parsed = cls.from_dict(json.loads(text))
    assert parsed == original
    # Comparing text, not objects, also catches 1 turning into 1.0.
    assert json.dumps(parsed.to_dict(), allow_nan=False) == text


@given(ns_strings)
def test_namespaced_string_round_trips_through_its_text_form(ns):
    assert NSString.parse(str(ns)) == ns


@given(export_configurations)
def test_export_configuration_round_trips_only_when_the_password_is_included(config):
    wire = json.loads(json.dumps(config.to_dict(include_password=True), allow_nan=False))
    assert ExportConfiguration.from_dict(wire) == config
    assert wire["type"] == config.type
    assert "password" not in config.to_dict()
