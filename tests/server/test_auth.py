"""Authentication and roles: every write route is protected; password checks are cached safely."""
from __future__ import annotations

import base64
import uuid

import pytest

from meteorpi_server import auth as auth_module
from meteorpi_server.auth import UserError, VerificationCache
from meteorpi_server.storage.orm import UserRow

READ_ONLY = {"GET", "HEAD", "OPTIONS"}
# Routes that are deliberately open to anyone (read-only ones only).
# /metrics follows the metrics_access setting, public by default (test_metrics_endpoint.py
# checks it refuses strangers when the setting names a role).
# /openapi.json describes the API (no secrets), for anyone (tests/api/test_openapi.py).
PUBLIC_ROUTES = {"/health", "/health/ready", "/metrics", "/openapi.json"}
# The status page (meteorpi_server/web) is for people in a browser: they log in through a
# form and carry a session cookie, not HTTP Basic credentials (an EventSource cannot send
# them). Its refusals are 401s without a Basic challenge, which would make the browser pop
# up its own password prompt, and the page itself redirects to the login form.
STATUS_PAGE = "/status"
# Status page routes open to anyone: "/", which only points at the page; the login form
# (no data); the page's CSS and script.
PUBLIC_PAGE_ROUTES = {"/", "/status/login", "/status/static/<path:filename>"}
# The one write route that answers without credentials, by nature: it is where they are
# given. It refuses any POST without its form's CSRF token (tests/web/test_status_page.py).
LOGIN_ROUTE = "/status/login"


def is_status_page_route(rule: str) -> bool:
    return rule == STATUS_PAGE or rule.startswith(STATUS_PAGE + "/")


def write_routes(app):
    for rule in app.url_map.iter_rules():
        if rule.endpoint == "static":
            continue
        for method in sorted((rule.methods or set()) - READ_ONLY):
            values = {name: uuid.uuid4().hex for name in rule.arguments}
            yield method, rule.rule, rule.build(values)[1]


def test_the_app_has_write_routes_to_check(app):
    assert {rule for _, rule, _ in write_routes(app)} >= {
        "/import", "/import/data/<file_id>/<md5>"}


def test_every_write_route_refuses_requests_without_credentials(app, client):
    for method, rule, url in write_routes(app):
        response = client.open(url, method=method, json={})
        if rule == LOGIN_ROUTE:
            assert response.status_code == 400, f"{method} {rule} took a form without its token"
            assert client.get("/status/data").status_code == 401  # and logged nobody in
            continue
        assert response.status_code == 401, f"{method} {rule} answered without credentials"
        assert response.get_json()["error"] == "unauthorized"
        if not is_status_page_route(rule):
            assert response.headers["WWW-Authenticate"].startswith("Basic")


def test_every_write_route_refuses_a_user_without_a_role(app, client, make_user):
    nobody = make_user("nobody")
    for method, rule, url in write_routes(app):
        response = client.open(url, method=method, json={}, auth=nobody)
        if rule == LOGIN_ROUTE:
            assert response.status_code == 400, f"{method} {rule} took a form without its token"
        elif is_status_page_route(rule):
            # Basic credentials are no session: the route does not take them at all.
            assert response.status_code == 401, f"{method} {rule} answered Basic credentials"
        else:
            assert response.status_code == 403, f"{method} {rule} answered a user with no roles"


def test_only_known_public_routes_answer_without_credentials(app, client, services):
    assert services.config.read_access == "user"  # the default: reading needs a user
    for rule in app.url_map.iter_rules():
        if rule.endpoint == "static" or not (rule.methods or set()) & {"GET"}:
            continue
        if rule.rule in PUBLIC_ROUTES or rule.rule in PUBLIC_PAGE_ROUTES:
            continue
        # Credentials are checked before anything is looked up, so ids that name nothing
        # are still refused with 401 (a 404 would tell a stranger what does not exist).
        url = rule.build({name: uuid.uuid4().hex for name in rule.arguments})[1]
        response = client.get(url)
        if rule.rule == STATUS_PAGE:
            assert response.status_code == 302, f"GET {rule.rule} answered {response.status_code}"
            assert response.headers["Location"] == LOGIN_ROUTE
            continue
        if is_status_page_route(rule.rule):
            assert response.status_code == 401, f"GET {rule.rule} answered {response.status_code}"
            assert response.get_json()["error"] == "unauthorized"
            continue
        assert response.status_code == 401, f"GET {rule.rule} answered {response.status_code}"
        assert response.headers["WWW-Authenticate"].startswith("Basic")


@pytest.mark.parametrize("credentials", [("node1", "wrong password"), ("ghost", "whatever"), ("", "")])
def test_wrong_credentials_are_a_401(client, exporter_auth, credentials):
    response = client.post("/import", json={}, auth=credentials)
    assert response.status_code == 401


@pytest.mark.parametrize("name", [
    "a\x00b", "\x00", "node1\x00", "bell\x07", "line\nbreak", "\x7f", "x" * 256, "x" * 90_000,
], ids=["nul-inside", "nul-alone", "nul-after-a-real-name", "bell", "newline", "delete",
        "one-too-long", "90-KB"])
def test_a_user_name_no_user_can_have_is_a_401_on_every_database(client, exporter_auth, name):
    response = client.post("/import", json={}, auth=(name, exporter_auth[1]))
    assert response.status_code == 401
    assert response.get_json()["error"] == "unauthorized"


def test_a_nul_in_the_password_is_a_401(client, exporter_auth):
    name, password = exporter_auth
    for wrong in ("\x00", password + "\x00", "\x00" + password, password[:3] + "\x00"):
        response = client.post("/import", json={}, auth=(name, wrong))
        assert response.status_code == 401


def test_no_password_can_hold_a_nul(services, exporter_auth):
    # The password hash pads with NULs: "pw" and "pw\0" would otherwise both match.
    with pytest.raises(UserError, match="NUL"):
        services.users.add("nulpass", "before\x00after", ["import"])
    with pytest.raises(UserError, match="NUL"):
        services.users.set_password("node1", "secret\x00")


@pytest.mark.parametrize("raw", [b"\xff\xfe:secret", b"node1:\xff", b"a\x00b\xc3:x"])
def test_credentials_that_are_not_utf8_are_a_401(client, exporter_auth, raw):
    header = "Basic " + base64.b64encode(raw).decode("ascii")
    response = client.post("/import", json={}, headers={"Authorization": header})
    assert response.status_code == 401


@pytest.mark.parametrize("name, password", [("a\x00b", "x"), ("node1", "\ud800"),
                                            ("\udcff", "x"), ("x" * 256, "x")])
def test_authenticate_refuses_unusable_credentials_without_an_error(services, exporter_auth,
                                                                   name, password):
    assert services.users.authenticate(name, password) is None


@pytest.mark.real_password_hashing
def test_passwords_are_hashed_with_werkzeugs_default_method(services):
    # Other tests hash cheaply (tests/conftest.py); this one sees what a server stores.
    services.users.add("real", "a real password", ["import"])
    with services.database.read() as session:
        stored = session.get(UserRow, "real").password_hash
    assert stored.startswith("scrypt:")
    assert auth_module._dummy_hash().startswith("scrypt:")
    assert services.users.authenticate("real", "a real password").roles == {"import"}
    assert services.users.authenticate("real", "a wrong password") is None
    assert services.users.authenticate("nobody", "a real password") is None


def test_the_import_role_is_needed_to_import(client, make_user):
    viewer = make_user("viewer", "user", "camera_admin")
    assert client.post("/import", json={}, auth=viewer).status_code == 403


@pytest.mark.parametrize("method, path, role", [
    ("POST", "/import", "import"),
    ("GET", "/cameras", "user"),
])
def test_a_403_names_the_role_the_route_needs(client, make_user, method, path, role):
    others = [other for other in ("user", "camera_admin", "import") if other != role]
    response = client.open(path, method=method, json={}, auth=make_user("someone", *others))
    assert response.status_code == 403
    assert response.json["role"] == role
    assert f"needs the role '{role}'" in response.json["message"]


def test_a_password_shorter_than_the_minimum_is_refused(services, exporter_auth):
    with pytest.raises(UserError, match="at least 12"):
        services.users.add("short", "elevenchars", ["import"])
    with pytest.raises(UserError, match="at least 12"):
        services.users.set_password("node1", "elevenchars")
    services.users.add("long", "twelve chars", ["import"])


class CountingChecks:
    def __init__(self, monkeypatch):
        self.calls = 0
        real = auth_module.check_password_hash

        def counting(password_hash, password):
            self.calls += 1
            return real(password_hash, password)

        monkeypatch.setattr(auth_module, "check_password_hash", counting)


def cached_entity_request(client, credentials):
    return client.post("/import", json={"type": "cached_entity", "cached_entity_id": uuid.uuid4().hex},
                       auth=credentials)


def test_a_successful_password_check_is_remembered(client, exporter_auth, monkeypatch):
    checks = CountingChecks(monkeypatch)
    for _ in range(5):
        assert cached_entity_request(client, exporter_auth).status_code == 200
    assert checks.calls == 1


def test_a_failed_password_check_is_not_remembered(client, exporter_auth, monkeypatch):
    checks = CountingChecks(monkeypatch)
    for _ in range(3):
        assert cached_entity_request(client, ("node1", "wrong")).status_code == 401
    assert checks.calls == 3


def test_a_password_change_makes_the_old_password_fail_at_once(client, services, exporter_auth):
    assert cached_entity_request(client, exporter_auth).status_code == 200
    services.users.set_password("node1", "a new password")
    assert cached_entity_request(client, exporter_auth).status_code == 401
    assert cached_entity_request(client, ("node1", "a new password")).status_code == 200


def test_a_role_change_applies_at_once(client, services, exporter_auth):
    assert cached_entity_request(client, exporter_auth).status_code == 200
    services.users.set_roles("node1", ["user"])
    assert cached_entity_request(client, exporter_auth).status_code == 403


def test_a_removed_user_is_refused_at_once(client, services, exporter_auth):
    assert cached_entity_request(client, exporter_auth).status_code == 200
    services.users.remove("node1")
    assert cached_entity_request(client, exporter_auth).status_code == 401


def test_the_verification_cache_is_bounded():
    cache = VerificationCache(max_entries=3, lifetime_seconds=60)
    for index in range(10):
        cache.add(f"user{index}", "hash", "password")
    assert len(cache) == 3
    assert cache.contains("user9", "hash", "password")
    assert not cache.contains("user0", "hash", "password")


def test_a_remembered_check_expires():
    cache = VerificationCache(max_entries=3, lifetime_seconds=-1)
    cache.add("user", "hash", "password")
    assert not cache.contains("user", "hash", "password")


def test_a_cache_of_size_zero_remembers_nothing():
    cache = VerificationCache(max_entries=0, lifetime_seconds=60)
    cache.add("user", "hash", "password")
    assert not cache.contains("user", "hash", "password")


def test_the_cache_never_holds_a_password():
    cache = VerificationCache(max_entries=3, lifetime_seconds=60)
    cache.add("user", "hash", "hunter2")
    assert not any(b"hunter2" in key for key in cache._entries)
