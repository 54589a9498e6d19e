"""Hand-written dicts in docs/protocol.rst's shape parse and re-emit exactly."""

from __future__ import annotations

import copy
import uuid

import pytest

from meteorpi_model import (
    ROLES,
    CameraStatus,
    Event,
    EventSearch,
    ExportConfiguration,
    FileRecord,
    FileSearch,
    Meta,
    MetaConstraint,
    NSString,
    Role,
    ValidationError,
    format_id,
    parse_id,
    parse_md5,
)
from model_samples import EVENT_ID, FILE_ID_1, FILE_ID_2, MD5, STATUS_ID, event_dict, file_dict, status_dict


@pytest.mark.parametrize(
    ("cls", "make_dict"),
    [(Event, event_dict), (FileRecord, file_dict), (CameraStatus, status_dict)],
    ids=["Event", "FileRecord", "CameraStatus"],
)
def test_protocol_shaped_dict_parses_and_re_emits_identically(cls, make_dict):
    wire = make_dict()
    emitted = cls.from_dict(copy.deepcopy(wire)).to_dict()
    assert emitted == wire
    assert list(emitted) == list(wire), "keys come out in docs/protocol.rst order"
    assert repr(emitted) == repr(wire), "ints stay ints and floats stay floats"


def test_event_fields_are_parsed_into_model_types():
    event = Event.from_dict(event_dict())
    assert event.event_id == uuid.UUID(EVENT_ID) == event.id
    assert event.event_type == NSString("movingObject", "meteorpi")
    assert [f.file_id for f in event.files] == [uuid.UUID(FILE_ID_1), uuid.UUID(FILE_ID_2)]
    assert event.files[1].md5 is None and event.files[1].file_name is None
    assert event.files[0].meta[3] == Meta.date("obs:seen", 1433001600000)


def test_entity_types_name_the_import_request_types():
    assert (Event.ENTITY_TYPE, FileRecord.ENTITY_TYPE, CameraStatus.ENTITY_TYPE) == ("event", "file", "status")


def test_id_property_returns_each_entitys_own_id():
    status = CameraStatus.from_dict(status_dict())
    record = FileRecord.from_dict(file_dict())
    assert status.id == uuid.UUID(STATUS_ID)
    assert record.id == uuid.UUID(FILE_ID_1)


def test_dashed_ids_are_accepted_and_emitted_as_32_hex_digits():
    wire = event_dict()
    wire["event_id"] = str(uuid.UUID(EVENT_ID)).upper()
    wire["files"][0]["status_id"] = str(uuid.UUID(STATUS_ID))
    emitted = Event.from_dict(wire).to_dict()
    assert emitted["event_id"] == EVENT_ID
    assert emitted["files"][0]["status_id"] == STATUS_ID


def test_uppercase_md5_is_accepted_and_emitted_lowercase():
    wire = file_dict() | {"md5": MD5.upper()}
    assert FileRecord.from_dict(wire).to_dict()["md5"] == MD5


@pytest.mark.parametrize(
    ("cls", "make_dict", "field"),
    [
        (FileRecord, file_dict, "md5"),
        (FileRecord, file_dict, "file_name"),
        (CameraStatus, status_dict, "valid_to"),
        (CameraStatus, status_dict, "lens"),
        (CameraStatus, status_dict, "sensor"),
        (CameraStatus, status_dict, "inst_url"),
        (CameraStatus, status_dict, "inst_name"),
    ],
)
def test_null_optional_field_is_read_as_absent_and_omitted_on_output(cls, make_dict, field):
    wire = make_dict() | {field: None}
    entity = cls.from_dict(wire)
    assert getattr(entity, field) is None
    assert field not in entity.to_dict()


def test_unknown_extra_keys_are_ignored():
    wire = event_dict() | {"x_future_field": [1, 2, {"a": None}]}
    wire["files"][0]["another"] = "ignored"
    assert Event.from_dict(wire) == Event.from_dict(event_dict())


def test_namespaced_string_without_namespace_is_in_the_meteorpi_namespace():
    wire = event_dict() | {"event_type": "movingObject"}
    event = Event.from_dict(wire)
    assert event.event_type == NSString("movingObject")
    assert event.event_type.namespace == "meteorpi"
    assert event.to_dict()["event_type"] == "meteorpi:movingObject"


@pytest.mark.parametrize(
    ("text", "namespace", "value"),
    [
        ("meteorpi:foo", "meteorpi", "foo"),
        ("foo", "meteorpi", "foo"),
        ("obs:a:b:c", "obs", "a:b:c"),
        ("\u6d41\u661f:\u2604", "\u6d41\u661f", "\u2604"),
    ],
)
def test_namespaced_string_splits_at_the_first_colon(text, namespace, value):
    ns = NSString.parse(text)
    assert (ns.namespace, ns.value) == (namespace, value)


def test_namespaced_string_is_always_written_with_its_namespace():
    assert str(NSString("foo")) == "meteorpi:foo"
    assert str(NSString("b:c", "a")) == "a:b:c"


def test_namespaced_strings_are_hashable_values():
    assert len({NSString("x"), NSString.parse("meteorpi:x"), NSString("x", "other")}) == 2


def test_meta_constructors_accept_keys_as_text_or_namespaced_strings():
    assert Meta.string("obs:k", "v") == Meta(NSString("k", "obs"), "string", "v")
    assert Meta.number(NSString("k"), 3).to_dict() == {"type": "number", "key": "meteorpi:k", "value": 3}
    assert Meta.date("k", 0).key == NSString("k")


@pytest.mark.parametrize(
    "text",
    ["9b2e6a3c4d5e4f708192a3b4c5d6e7f8", "9B2E6A3C4D5E4F708192A3B4C5D6E7F8", "9b2e6a3c-4d5e-4f70-8192-a3b4c5d6e7f8"],
)
def test_parse_id_accepts_hex_in_either_case_and_the_dashed_form(text):
    assert parse_id(text) == uuid.UUID(EVENT_ID)
    assert format_id(parse_id(text)) == EVENT_ID


@pytest.mark.parametrize(
    "value",
    [
        "{9b2e6a3c-4d5e-4f70-8192-a3b4c5d6e7f8}",
        "urn:uuid:9b2e6a3c-4d5e-4f70-8192-a3b4c5d6e7f8",
        "9b2e6a3c4d5e4f708192a3b4c5d6e7f",
        "9b2e6a3c4d5e4f708192a3b4c5d6e7f8\n",
        "9b2e6a3c-4d5e4f70-8192-a3b4c5d6e7f8a",
        "9b2e6a3c4d5e4f708192a3b4c5d6e7fg",
        "",
        None,
        12,
        uuid.UUID(EVENT_ID),
    ],
)
def test_parse_id_rejects_anything_else_with_the_given_path(value):
    with pytest.raises(ValidationError) as caught:
        parse_id(value, "file_id")
    assert caught.value.path == "file_id"


def test_parse_md5_lowercases_and_rejects_non_digests():
    assert parse_md5(MD5.upper()) == MD5
    for bad in (MD5[:-1], MD5 + "0", "g" * 32, None, 5):
        with pytest.raises(ValidationError):
            parse_md5(bad, "md5")


def test_roles_are_the_three_protocol_roles():
    assert ROLES == ("user", "camera_admin", "import")
    assert [role.value for role in Role] == list(ROLES)
    assert Role("import") is Role.IMPORT and Role.IMPORT == "import" and str(Role.CAMERA_ADMIN) == "camera_admin"


def test_validation_error_reads_as_path_then_message():
    error = ValidationError("event.files[0].md5", "must be an MD5 digest of 32 hex digits")
    assert str(error) == "event.files[0].md5: must be an MD5 digest of 32 hex digits"
    assert str(ValidationError("", "must be an object")) == "must be an object"
    assert isinstance(error, ValueError)


def test_searches_use_the_read_api_field_names():
    wire = {
        "camera_ids": ["obs-cambridge-1"],
        "lat_min": 50.0,
        "lat_max": 55,
        "after": 1420070400000,
        "after_offset": 50400,
        "before_offset": 57600.5,
        "event_type": "meteorpi:movingObject",
        "meta_constraints": [{"type": "greater", "key": "meteorpi:peak", "value": 200}],
        "limit": 20,
        "skip": 40,
    }
    search = EventSearch.from_dict(wire)
    assert search.meta_constraints == [MetaConstraint("greater", NSString("peak"), 200)]
    assert search.to_dict() == wire


def test_search_defaults_are_limit_100_skip_0_and_no_criteria():
    assert EventSearch.from_dict({}) == EventSearch()
    assert EventSearch().to_dict() == {"limit": 100, "skip": 0}
    assert FileSearch.from_dict({"exclude_events": True}).to_dict() == {
        "exclude_events": True,
        "limit": 100,
        "skip": 0,
    }


def test_export_configuration_type_selects_the_search_class():
    wire = {
        "config_id": EVENT_ID,
        "type": "file",
        "name": "to the archive",
        "description": "",
        "target_url": "https://archive.example.org/api/import",
        "user_id": "cambridge",
        "password": "s3cret",
        "enabled": False,
        "search": {"mime_type": "video/mp4", "exclude_events": True, "limit": 100, "skip": 0},
    }
    config = ExportConfiguration.from_dict(wire)
    assert isinstance(config.search, FileSearch) and config.type == "file"
    assert config.to_dict(include_password=True) == wire
    assert "password" not in config.to_dict()
