"""Failed authentications are throttled per client address and per user name, before any
password is hashed (issue 14): guessing passwords must not keep the workers busy."""
from __future__ import annotations

import logging
import re
import time as real_time

import limits.storage.memory
import pytest
from scrapes import scrape

from meteorpi_server import auth as auth_module
from meteorpi_server import create_app
from meteorpi_server import throttle as throttle_module
from meteorpi_server.config import Config
from meteorpi_server.throttle import address_key

WINDOW = 300
WRONG = "not the password at all"
ATTACKER = {"REMOTE_ADDR": "198.51.100.7"}
ELSEWHERE = {"REMOTE_ADDR": "198.51.100.8"}


class FakeTime:
    """A clock the test moves by hand, standing in for the ``time`` module where the
    throttle (and the limits library's memory storage under it) reads the time."""

    def __init__(self):
        self.now = real_time.time()

    def time(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock(monkeypatch) -> FakeTime:
    fake = FakeTime()
    monkeypatch.setattr(limits.storage.memory, "time", fake)
    monkeypatch.setattr(throttle_module, "time", fake)
    return fake


@pytest.fixture
def hashes(monkeypatch) -> list[str]:
    """The names whose password was hashed (each check of a password, a dummy one too)."""
    checked: list[str] = []
    original = auth_module.check_password_hash

    def counting(password_hash: str, password: str) -> bool:
        checked.append(password_hash)
        return original(password_hash, password)

    monkeypatch.setattr(auth_module, "check_password_hash", counting)
    return checked


@pytest.fixture
def throttled_client(settings):
    """A test client of an app with these throttle settings (on the test's database, where
    ``make_user`` adds users); its services are the client's ``services``."""
    apps = []

    def make(per_address: int = 3, per_user: int = 100, **more):
        app = create_app(Config.from_mapping({
            **settings, "auth_failures_per_address": per_address,
            "auth_failures_per_user": per_user, "auth_failure_window_seconds": WINDOW, **more}))
        apps.append(app)
        client = app.test_client()
        client.services = app.extensions["meteorpi"]
        return client

    yield make
    for app in apps:
        app.extensions["meteorpi"].database.dispose()


def post_import(client, auth, environ=ATTACKER, **headers):
    return client.post("/import", json={"type": "cached_entity", "cached_entity_id": "0" * 32},
                       auth=auth, environ_base=environ, headers=headers)


def assert_throttled(response, within: int = WINDOW) -> int:
    assert response.status_code == 429, response.get_data(as_text=True)
    retry_after = int(response.headers["Retry-After"])
    assert 1 <= retry_after <= within
    body = response.get_json()
    assert body["error"] == "too_many_requests"
    assert body["retry_after"] == retry_after
    assert body["state"] == "failed"  # under /import, as every error there
    return retry_after


def test_failures_from_one_address_are_throttled_without_hashing(throttled_client, exporter_auth,
                                                                   hashes, clock):
    client = throttled_client(per_address=3)
    name = exporter_auth[0]
    for _ in range(3):
        assert post_import(client, (name, WRONG)).status_code == 401
    assert len(hashes) == 3
    assert_throttled(post_import(client, (name, WRONG)))
    assert_throttled(post_import(client, ("somebody-else", WRONG)))
    # The right password is not checked either: nothing from that address is hashed.
    assert_throttled(post_import(client, exporter_auth))
    assert len(hashes) == 3
    # Another address is not affected.
    assert post_import(client, (name, WRONG), environ=ELSEWHERE).status_code == 401
    assert post_import(client, exporter_auth, environ=ELSEWHERE).status_code == 200


def test_the_window_moves_on(throttled_client, exporter_auth, hashes, clock):
    client = throttled_client(per_address=3)
    name = exporter_auth[0]
    for _ in range(3):
        assert post_import(client, (name, WRONG)).status_code == 401
        clock.advance(10)
    # The first failure was 30 s ago: it leaves the window in WINDOW - 30 s.
    assert assert_throttled(post_import(client, (name, WRONG))) == WINDOW - 30
    clock.advance(WINDOW - 30 - 1)
    assert assert_throttled(post_import(client, (name, WRONG))) == 1
    clock.advance(1.5)
    hashed = len(hashes)
    assert post_import(client, (name, WRONG)).status_code == 401  # one failure has aged out
    assert len(hashes) == hashed + 1
    assert_throttled(post_import(client, (name, WRONG)))
    clock.advance(WINDOW)
    assert post_import(client, exporter_auth).status_code == 200


def test_failures_for_one_name_are_throttled_from_any_address(throttled_client, exporter_auth,
                                                                hashes, clock):
    client = throttled_client(per_address=100, per_user=3)
    name = exporter_auth[0]
    for number in range(3):
        environ = {"REMOTE_ADDR": f"203.0.113.{number + 1}"}
        assert post_import(client, (name, WRONG), environ=environ).status_code == 401
    assert_throttled(post_import(client, (name, WRONG), environ={"REMOTE_ADDR": "203.0.113.99"}))
    assert len(hashes) == 3
    # Other names from the same addresses are not.
    assert post_import(client, ("ghost", WRONG), environ={"REMOTE_ADDR": "203.0.113.1"}).status_code == 401
    # Names that exist and names that do not are throttled alike (a 429 does not tell
    # which names exist).
    for _ in range(3):
        assert post_import(client, ("nobody-here", WRONG)).status_code == 401
    assert_throttled(post_import(client, ("nobody-here", WRONG)))


def test_an_exporter_with_verified_credentials_keeps_working_while_its_name_is_throttled(
        throttled_client, exporter_auth, hashes, clock):
    client = throttled_client(per_address=100, per_user=3)
    exporter = {"REMOTE_ADDR": "192.0.2.10"}
    assert post_import(client, exporter_auth, environ=exporter).status_code == 200
    for _ in range(5):  # an attacker guesses at the exporter's name
        post_import(client, (exporter_auth[0], WRONG), environ=ATTACKER)
    assert_throttled(post_import(client, (exporter_auth[0], WRONG), environ=ATTACKER))
    hashed = len(hashes)
    for _ in range(20):  # its own requests carry the verified password: no hash, no 429
        assert post_import(client, exporter_auth, environ=exporter).status_code == 200
    assert len(hashes) == hashed
    # When the remembered check expires (auth_cache_seconds), the exporter's address is
    # one its name logged in from: its password is checked again, the name's throttle
    # notwithstanding.
    client.services.users.cache = auth_module.VerificationCache(16, 60)
    assert post_import(client, exporter_auth, environ=exporter).status_code == 200
    assert len(hashes) == hashed + 1
    # From any other address, a check that needs a hash waits for the window.
    client.services.users.cache = auth_module.VerificationCache(16, 60)
    assert_throttled(post_import(client, exporter_auth, environ={"REMOTE_ADDR": "192.0.2.11"}))
    assert_throttled(post_import(client, (exporter_auth[0], WRONG), environ=ATTACKER))
    assert len(hashes) == hashed + 1
    # After a day, an address is no longer known for the name.
    clock.advance(throttle_module.KNOWN_ADDRESS_SECONDS + 1)
    for _ in range(3):
        post_import(client, (exporter_auth[0], WRONG), environ=ATTACKER)
    client.services.users.cache = auth_module.VerificationCache(16, 60)
    assert_throttled(post_import(client, exporter_auth, environ=exporter))
    clock.advance(WINDOW)
    assert post_import(client, exporter_auth, environ=exporter).status_code == 200


_CSRF = re.compile(r'name="csrf_token" type="hidden" value="([^"]+)"')


def submit_login(client, name: str, password: str, environ=ATTACKER):
    page = client.get("/status/login", environ_base=environ).get_data(as_text=True)
    token = _CSRF.search(page).group(1)
    return client.post("/status/login", environ_base=environ,
                       data={"name": name, "password": password, "csrf_token": token})


def test_the_status_page_login_is_throttled(throttled_client, make_user, hashes, clock):
    client = throttled_client(per_address=3)
    viewer = make_user("viewer", "user")
    for _ in range(3):
        assert submit_login(client, viewer[0], WRONG).status_code == 401
    before = scrape(client).value("meteorpi_auth_failures_total", reason="throttled")
    hashed = len(hashes)
    response = submit_login(client, *viewer)
    assert response.status_code == 429
    assert 1 <= int(response.headers["Retry-After"]) <= WINDOW
    page = response.get_data(as_text=True)
    assert "too many failed logins from your address" in page
    assert 'name="password"' in page  # the form again
    assert len(hashes) == hashed
    assert scrape(client).value("meteorpi_auth_failures_total", reason="throttled") == before + 1
    # Basic credentials from that address are refused too: one count for both.
    assert_throttled(post_import(client, ("node-x", WRONG)))
    # Elsewhere the same user logs in.
    assert submit_login(client, *viewer, environ=ELSEWHERE).status_code == 303


def test_failures_are_counted_and_logged_with_the_address(throttled_client, exporter_auth,
                                                          caplog, clock):
    client = throttled_client(per_address=2)
    before = scrape(client)
    with caplog.at_level(logging.WARNING, logger="meteorpi.auth"):
        for _ in range(2):
            assert post_import(client, (exporter_auth[0], WRONG)).status_code == 401
        assert post_import(client, ("ghost", WRONG), environ=ELSEWHERE).status_code == 401
        assert_throttled(post_import(client, (exporter_auth[0], WRONG)))
    after = scrape(client)

    def counted(reason: str) -> float:
        return (after.value("meteorpi_auth_failures_total", reason=reason)
                - before.value("meteorpi_auth_failures_total", reason=reason))

    assert counted("unauthorized") == 3
    assert counted("throttled") == 1
    lines = [record.getMessage() for record in caplog.records if record.name == "meteorpi.auth"]
    assert lines == [
        "authentication failed: address=198.51.100.7 user=node1 reason=wrong_password",
        "authentication failed: address=198.51.100.7 user=node1 reason=wrong_password",
        "authentication failed: address=198.51.100.8 user=ghost reason=unknown_user",
        f"authentication failed: address=198.51.100.7 user=node1 reason=throttled_address "
        f"retry_after={WINDOW}",
    ]
    assert all(record.levelno == logging.WARNING for record in caplog.records)
    assert not any(WRONG in line for line in lines)  # the password is never logged


def test_behind_a_trusted_proxy_the_forwarded_address_counts(throttled_client, exporter_auth,
                                                             caplog, clock):
    client = throttled_client(per_address=2, trusted_proxies=1)
    proxy = {"REMOTE_ADDR": "127.0.0.1"}
    with caplog.at_level(logging.WARNING, logger="meteorpi.auth"):
        for _ in range(2):
            # nginx appends the address it saw to whatever the client sent.
            response = post_import(client, ("node1", WRONG), environ=proxy,
                                   **{"X-Forwarded-For": "10.9.9.9, 203.0.113.50"})
            assert response.status_code == 401
    assert "address=203.0.113.50 " in caplog.records[-1].getMessage()
    assert_throttled(post_import(client, ("node1", WRONG), environ=proxy,
                                 **{"X-Forwarded-For": "203.0.113.50"}))
    # Another client behind the same proxy is not throttled.
    assert post_import(client, exporter_auth, environ=proxy,
                       **{"X-Forwarded-For": "203.0.113.51"}).status_code == 200


def test_without_the_setting_a_forged_forwarded_address_is_ignored(throttled_client, caplog,
                                                                  clock):
    client = throttled_client(per_address=2)
    with caplog.at_level(logging.WARNING, logger="meteorpi.auth"):
        for number in range(2):
            response = post_import(client, ("node1", WRONG),
                                   **{"X-Forwarded-For": f"10.0.0.{number}", "X-Real-IP": "10.1.1.1"})
            assert response.status_code == 401
    assert all("address=198.51.100.7 " in record.getMessage() for record in caplog.records)
    assert_throttled(post_import(client, ("node1", WRONG), **{"X-Forwarded-For": "10.0.0.99"}))


def test_limits_of_zero_turn_the_throttle_off(throttled_client, exporter_auth, hashes):
    client = throttled_client(per_address=0, per_user=0)
    for _ in range(30):
        assert post_import(client, (exporter_auth[0], WRONG)).status_code == 401
    assert len(hashes) == 30
    assert post_import(client, exporter_auth).status_code == 200


@pytest.mark.parametrize("address, key", [
    ("192.0.2.1", "192.0.2.1"),
    ("2001:db8:1:2:3:4:5:6", "2001:db8:1:2::/64"),
    ("2001:db8:1:2:ffff::1", "2001:db8:1:2::/64"),
    ("::ffff:192.0.2.1", "192.0.2.1"),
    (None, None),
    ("", None),
    ("not-an-address", "not-an-address"),
])
def test_addresses_are_counted_per_ipv4_address_or_ipv6_64(address, key):
    assert address_key(address) == key


def test_a_remembered_password_that_changed_is_throttled_like_any_other(
        throttled_client, exporter_auth, hashes, clock):
    client = throttled_client(per_address=2, per_user=0)
    exporter = {"REMOTE_ADDR": "192.0.2.10"}
    assert post_import(client, exporter_auth, environ=exporter).status_code == 200
    client.services.users.set_password(exporter_auth[0], "a brand new password")
    for _ in range(2):
        assert post_import(client, (exporter_auth[0], WRONG), environ=exporter).status_code == 401
    hashed = len(hashes)
    # The old password is remembered under the old hash only: it needs a hash, so it waits.
    assert_throttled(post_import(client, exporter_auth, environ=exporter))
    assert len(hashes) == hashed


def test_the_cache_knows_which_names_and_passwords_it_may_hold():
    cache = auth_module.VerificationCache(2, 60)
    cache.add("a", "hash-a", "pw-a")
    assert cache.may_contain("a", "pw-a") and not cache.may_contain("a", "pw-b")
    cache.add("a", "hash-a2", "pw-a")  # the same password under a new hash
    cache.add("b", "hash-b", "pw-b")  # evicts the oldest entry of "a"
    assert cache.may_contain("a", "pw-a") and not cache.contains("a", "hash-a", "pw-a")
    cache.add("c", "hash-c", "pw-c")  # evicts the last entry of "a"
    assert not cache.may_contain("a", "pw-a") and not cache.contains("a", "hash-a2", "pw-a")
    assert cache.may_contain("b", "pw-b") and cache.may_contain("c", "pw-c")
    assert not auth_module.VerificationCache(0, 60).may_contain("b", "pw-b")


@pytest.mark.slow
def test_meteorpi_serve_throttles_in_each_worker(settings, gunicorn_server, exporter_auth):
    """Under gunicorn each worker counts on its own: an address gets at most workers x
    the limit of hashed failures, then 429s; the log says who and why."""
    import requests

    settings.update(auth_failures_per_address=2, auth_failures_per_user=0)
    server = gunicorn_server(workers=2)
    statuses = []
    for _ in range(12):  # a new connection each time: the workers take turns
        response = requests.post(f"{server.url}/import", json={}, auth=(exporter_auth[0], WRONG),
                                 headers={"Connection": "close"}, timeout=30)
        statuses.append(response.status_code)
        if response.status_code == 429:
            assert int(response.headers["Retry-After"]) >= 1
            assert response.json()["error"] == "too_many_requests"
    assert 2 <= statuses.count(401) <= 4, statuses
    assert 429 in statuses and statuses.count(401) + statuses.count(429) == 12
    if statuses.count(401) == 4:  # both workers refuse this address now
        response = requests.get(f"{server.url}/import", auth=exporter_auth, timeout=30,
                                headers={"X-Forwarded-For": "203.0.113.9"})
        assert response.status_code == 429  # X-Forwarded-For is not trusted by default
    server.stop()
    log = server.log_path.read_text()
    assert "authentication failed: address=127.0.0.1 user=node1 reason=wrong_password" in log
    assert "reason=throttled_address" in log
    assert WRONG not in log
