"""GET /openapi.json describes every route of the app, with the role each needs.

The document (meteorpi_server/api/openapi.yaml) is kept by hand, so these tests are what
keeps it true: a route, a method or a role changed in the code and not in the document
(or the other way round) fails here.
"""
from __future__ import annotations

import re
import shutil

import pytest
from openapi_spec_validator import validate

from meteorpi_server.api.security import ACCESS_ATTRIBUTE, ROLE_ATTRIBUTE

METHODS = ("get", "put", "post", "delete", "patch")
# Flask answers these by itself (HEAD for every GET, OPTIONS for every route).
IMPLICIT_METHODS = {"HEAD", "OPTIONS"}


def openapi_path(rule: str) -> str:
    """A Flask rule as an OpenAPI path: /files/<path:search_json> -> /files/{search_json}."""
    return re.sub(r"<(?:[^:<>]+:)?([^<>]+)>", r"{\1}", rule)


def app_operations(app) -> dict[tuple[str, str], object]:
    """(path, method) -> view function, for every rule of the app."""
    operations = {}
    for rule in app.url_map.iter_rules():
        for method in rule.methods - IMPLICIT_METHODS:
            operations[(openapi_path(rule.rule), method.lower())] = app.view_functions[rule.endpoint]
    return operations


def document_operations(document) -> dict[tuple[str, str], dict]:
    return {(path, method): operation
            for path, item in document["paths"].items()
            for method, operation in item.items() if method in METHODS}


@pytest.fixture
def database_url(tmp_path, sqlite_template) -> str:
    """SQLite only: the document is the same whatever the database."""
    path = tmp_path / "meteorpi.db"
    shutil.copy(sqlite_template, path)
    return f"sqlite:///{path}"


@pytest.fixture
def document_of_settings(settings):
    """Build the app from the test's settings as they are now; returns it and its document."""
    from meteorpi_server import create_app
    from meteorpi_server.config import Config

    apps = []

    def build():
        app = create_app(Config.from_mapping(settings))
        apps.append(app)
        return app, app.test_client().get("/openapi.json").get_json()

    yield build
    for app in apps:
        app.extensions["meteorpi"].database.dispose()


@pytest.fixture
def document(client):
    response = client.get("/openapi.json")
    assert response.status_code == 200
    assert response.mimetype == "application/json"
    return response.get_json()


def test_the_document_is_valid_openapi_3_1(document):
    assert document["openapi"].startswith("3.1")
    validate(document)


def test_the_document_is_public(client):
    assert client.get("/openapi.json").status_code == 200  # no credentials


def test_every_route_and_method_is_in_the_document_and_nothing_else(app, document):
    in_app, in_document = set(app_operations(app)), set(document_operations(document))
    assert sorted(in_app - in_document) == [], "routes the document does not describe"
    assert sorted(in_document - in_app) == [], "operations the app does not serve"


def test_each_operation_names_the_role_its_view_requires(app, document):
    described = document_operations(document)
    for key, view in app_operations(app).items():
        operation = described[key]
        role = getattr(view, ROLE_ATTRIBUTE, None)
        setting = getattr(view, ACCESS_ATTRIBUTE, None)
        where = f"{key[1].upper()} {key[0]}"
        assert operation.get("x-meteorpi-access-setting") == setting, where
        if setting is not None:
            # The audience is a setting's; the document gives its default (public or a role).
            assert operation.get("x-meteorpi-role") == _default(setting), where
        else:
            assert operation.get("x-meteorpi-role") == role, where
        assert (operation.get("x-meteorpi-authentication")
                == getattr(view, "meteorpi_authentication", None)), where


def _default(setting: str) -> str:
    from meteorpi_server.config import SETTINGS

    return next(item.default for item in SETTINGS if item.name == setting)


def test_each_operation_asks_for_the_credentials_its_role_needs(app, document):
    for (path, method), operation in document_operations(document).items():
        where = f"{method.upper()} {path}"
        security = operation.get("security")
        assert security is not None, f"{where}: say which credentials, [] for none"
        if "x-meteorpi-access-setting" in operation:
            assert {} in security and {"basicAuth": []} in security, where
        elif operation.get("x-meteorpi-authentication") == "session":
            assert security == [{"sessionCookie": []}], where
        elif "x-meteorpi-role" in operation:
            assert security == [{"basicAuth": []}], where
        else:
            assert security == [], where


def test_authenticated_operations_describe_the_refusals(document):
    for (path, method), operation in document_operations(document).items():
        where = f"{method.upper()} {path}"
        responses = operation["responses"]
        if "basicAuth" in str(operation["security"]):
            for status in ("401", "403", "429"):
                assert status in responses, f"{where} lacks {status}"
        if "{" in path:
            assert "404" in responses, f"{where}: a path parameter may name nothing"


def test_no_static_route(app, client):
    """Flask's default /static is gone (the status page has /status/static)."""
    assert not any(rule.rule.startswith("/static") for rule in app.url_map.iter_rules())
    assert client.get("/static/status.css").status_code == 404


# Replies the fuzzer meets rarely or never, checked against the document here ------------

def conforms(document, method: str, path: str, response) -> None:
    """Fail unless ``response`` (a test client's) is one the document allows for the
    operation: its status, content type, body and required headers."""
    import schemathesis
    from schemathesis.checks import (content_type_conformance, response_headers_conformance,
                                     response_schema_conformance, status_code_conformance)

    schema = schemathesis.openapi.from_dict(document)
    case = schema[path][method.upper()].Case()
    case.validate_response(response, checks=[
        status_code_conformance, content_type_conformance, response_schema_conformance,
        response_headers_conformance])


def test_a_throttled_attempt_is_a_documented_429_with_retry_after(settings,
                                                                   document_of_settings):
    settings.update(auth_failures_per_address=2)
    app, document = document_of_settings()
    client = app.test_client()
    for _ in range(2):
        assert client.get("/cameras", auth=("nobody", "wrong")).status_code == 401
    response = client.get("/cameras", auth=("nobody", "wrong"))
    assert response.status_code == 429
    assert response.headers["Retry-After"].isdigit()
    conforms(document, "get", "/cameras", response)


def test_a_refusal_names_the_role_and_conforms(client, document, make_user):
    response = client.get("/exports", auth=make_user("reader", "user"))
    assert response.status_code == 403
    assert response.get_json()["role"] == "camera_admin"
    conforms(document, "get", "/exports", response)
    response = client.get("/import", auth=("reader", "wrong"))
    assert response.status_code == 401 and response.get_json()["state"] == "failed"
    conforms(document, "get", "/import", response)


def test_a_cursor_past_the_newest_change_is_a_documented_400(client, document, make_user):
    auth = make_user("reader", "user")
    response = client.get("/changes?since=5", auth=auth)
    assert response.status_code == 400
    assert response.get_json()["newest"] == 0
    conforms(document, "get", "/changes", response)
    response = client.get("/changes/stream?since=5", auth=auth)
    assert response.status_code == 400
    conforms(document, "get", "/changes/stream", response)


def test_the_legacy_handshake_conforms(client, document, exporter_auth):
    import factories

    owner = factories.status()
    data = factories.file_bytes(64)
    record = factories.file_record(owner, data)
    event = factories.event(owner, [record])
    steps = [("post", "/import", {"json": {"type": "event", "event": event.to_dict()}}),
             ("post", "/import", {"json": {"type": "status", "status": owner.to_dict()}}),
             ("get", "/import", {})]
    for method, path, body in steps:
        response = getattr(client, method)(path, auth=exporter_auth, **body)
        assert response.status_code == 200, response.get_json()
        conforms(document, method, path, response)
    response = client.get("/cameras/cam-1", auth=exporter_auth)
    assert response.status_code == 403
