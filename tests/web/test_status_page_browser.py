"""The status page in a real browser (headless Chromium, driven by selenium), served on
a real socket: logging in, the cameras and newest events with their thumbnails, and an
import that appears on the page without a reload.

Chromium and ChromeDriver come from Debian (``make browser`` installs them:
``apt-get install chromium chromium-driver``). Without them this test is skipped, unless
METEORPI_REQUIRE_BROWSER=1 (as in CI), which makes that a failure.

The page is saved as a screenshot in the test's tmp_path, and also where
METEORPI_SCREENSHOT says, if set (docs/images/status-page.png was made so); the data is
then richer, so that the picture looks like a real server's page.
"""
from __future__ import annotations

import os
import random
import shutil
import sys
import uuid
from pathlib import Path

import factories
import pytest
import requests
from conftest import PASSWORD
from export_nodes import Node
from sqlalchemy import update

sys.path.insert(0, str(Path(__file__).parent))
from status_page_helpers import png, record_event  # noqa: E402

from meteorpi_model import EventSearch, ExportConfiguration  # noqa: E402
from meteorpi_server.exporter import configs  # noqa: E402
from meteorpi_server.node import demo  # noqa: E402
from meteorpi_server.node.recording import Recorder  # noqa: E402
from meteorpi_server.storage.orm import CameraRow  # noqa: E402
from meteorpi_server.storage.store import now_ms  # noqa: E402

REQUIRE_BROWSER = os.environ.get("METEORPI_REQUIRE_BROWSER", "") not in ("", "0")
SCREENSHOT = os.environ.get("METEORPI_SCREENSHOT", "")
INSTALL_HINT = ("install them with 'make browser' (or: sudo apt-get install chromium "
                "chromium-driver)")
WAIT_SECONDS = 60  # generous: the machine running the tests may be busy
HOUR_MS = 3600 * 1000


def _find(*names: str) -> str | None:
    return next((path for path in map(shutil.which, names) if path), None)


@pytest.fixture
def browser(tmp_path):
    """Headless Chromium under selenium."""
    if REQUIRE_BROWSER:
        from selenium import webdriver
    else:
        webdriver = pytest.importorskip("selenium.webdriver", reason=f"selenium missing: pip "
                                        "install -e '.[test]'")
    chromium = _find("chromium", "chromium-browser", "google-chrome")
    driver_path = _find("chromedriver")
    if chromium is None or driver_path is None:
        missing = " and ".join(name for name, path in (("Chromium", chromium),
                                                       ("ChromeDriver", driver_path)) if not path)
        message = f"{missing} not found; {INSTALL_HINT}"
        if REQUIRE_BROWSER:
            pytest.fail(f"a browser is required (METEORPI_REQUIRE_BROWSER=1): {message}")
        pytest.skip(message)
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                     "--window-size=1440,2000", "--hide-scrollbars",
                     f"--user-data-dir={tmp_path / 'chromium-profile'}"):
        options.add_argument(argument)
    driver = webdriver.Chrome(options=options,
                              service=webdriver.ChromeService(executable_path=driver_path))
    yield driver
    driver.quit()


@pytest.fixture
def settings(settings, tmp_path):
    settings["cache_dir"] = str(tmp_path / "cache")
    # Streams end soon and the browser reconnects, so no stream outlives the test for long.
    settings["feed_stream_seconds"] = 5
    settings["feed_heartbeat_seconds"] = 1
    return settings


@pytest.fixture
def server(app, settings):
    node = Node("central", settings, app).serve()
    yield node
    node.stop_serving()


class LiveClient:
    """requests, made to look like the Flask test client that ProtocolClient drives."""

    def __init__(self, base_url: str):
        self.base_url = base_url
        self.session = requests.Session()

    def post(self, path, json=None, data=None, auth=None, content_type=None):
        files = None
        if isinstance(data, dict):  # an upload: {"file": (stream, name)}, as requests has it
            files, data = {key: (name, stream) for key, (stream, name) in data.items()}, None
        response = self.session.post(self.base_url + path, json=json, data=data, files=files,
                                     auth=auth, timeout=30)
        response.get_json = response.json
        response.get_data = lambda as_text=False: response.text if as_text else response.content
        return response


def _import_event(server: Node, auth, camera_id: str, time_ms: int):
    """A camera node replicates one event, with a real image, over the legacy protocol."""
    from protocol import ProtocolClient

    status = factories.status(camera_id, valid_from=time_ms - HOUR_MS,
                              inst_name="Hills observatory")
    data = png(960, 720, colour=(5, 10, 30))
    record = factories.file_record(status, data, time_ms)
    event = factories.event(status, [record], time_ms)
    states = ProtocolClient(LiveClient(server.url), auth).replicate(
        event, {status.status_id: status}, {record.file_id: data})
    assert states[-1] == "complete", states
    return event


def _seed(services, scratch: Path) -> None:
    """What the server holds before the browser looks: a camera heard from a few days
    ago, one heard from now; with a screenshot asked for, demo cameras too, and an
    export target."""
    now = now_ms()
    record_event(services, scratch, camera_id="roof-camera", time_ms=now - 2 * HOUR_MS)
    record_event(services, scratch, camera_id="old-camera", time_ms=now - 80 * HOUR_MS)
    with services.database.write() as session:
        session.execute(update(CameraRow).where(CameraRow.camera_id == "old-camera")
                        .values(last_seen=now - 72 * HOUR_MS))
    if SCREENSHOT:
        demo.generate(Recorder(services.database, services.files),
                      demo.DemoPlan(cameras=2, nights=1, events_per_night=5, files_per_event=1,
                                    standalone_files=0, file_size=40 * 1024),
                      random.Random(13))
        with services.database.write() as session:
            configs.add(session, ExportConfiguration(
                config_id=uuid.uuid4(), name="archive", target_url="https://archive.example.org/import",
                user_id="central", password="a long secret", search=EventSearch()))


def _wait(driver, condition, what: str):
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, WAIT_SECONDS).until(lambda _: condition(), message=what)


def _image_loaded(driver, css: str) -> bool:
    return driver.execute_script(
        "var img = document.querySelector(arguments[0]);"
        "return !!img && img.complete && img.naturalWidth > 0;", css)


def _log_in(driver, name: str, password: str) -> None:
    from selenium.webdriver.common.by import By

    driver.find_element(By.ID, "name").clear()
    driver.find_element(By.ID, "name").send_keys(name)
    driver.find_element(By.ID, "password").send_keys(password)
    driver.find_element(By.ID, "login-button").click()


def _screenshot(driver, tmp_path: Path) -> None:
    saved = tmp_path / "status-page.png"
    driver.save_screenshot(str(saved))
    assert saved.stat().st_size > 0
    if SCREENSHOT:
        Path(SCREENSHOT).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(saved, SCREENSHOT)


def test_a_user_logs_in_and_watches_an_import_arrive_without_a_reload(
        browser, server, services, make_user, exporter_auth, tmp_path):
    from selenium.webdriver.common.by import By

    _seed(services, tmp_path / "scratch")
    make_user("viewer", "user")

    # Logged out, the page sends the browser to its login form; a wrong password shows
    # an error and none of the data.
    browser.get(server.url + "/status")
    _wait(browser, lambda: browser.current_url.endswith("/status/login"), "the login form")
    _log_in(browser, "viewer", "not the password")
    error = _wait(browser, lambda: browser.find_elements(By.ID, "login-error"), "an error")[0]
    assert "wrong user name or password" in error.text
    assert "roof-camera" not in browser.page_source

    _log_in(browser, "viewer", PASSWORD)
    _wait(browser, lambda: browser.current_url.endswith("/status"), "the status page")
    roof = _wait(browser, lambda: browser.find_elements(
        By.CSS_SELECTOR, '.camera[data-camera-id="roof-camera"]'), "the roof camera")[0]
    assert "connected" in roof.get_attribute("class")
    old = browser.find_element(By.CSS_SELECTOR, '.camera[data-camera-id="old-camera"]')
    assert "seen" in old.get_attribute("class").split()
    assert browser.find_element(By.ID, "health-badge").text == "ok"
    _wait(browser, lambda: _image_loaded(browser, "#event-list .event img.thumb"),
          "the newest event's thumbnail")
    _wait(browser, lambda: browser.find_element(By.ID, "live").get_attribute("data-state") == "live",
          "the page following the change feed")

    # A camera node replicates an event; the page shows it without reloading.
    browser.execute_script("window.statusPageMarker = 'set before the import';")
    event = _import_event(server, exporter_auth, "school-camera", now_ms())
    selector = f'#event-list .event[data-event-id="{event.event_id.hex}"]'
    _wait(browser, lambda: browser.find_elements(By.CSS_SELECTOR, selector), "the imported event")
    _wait(browser, lambda: _image_loaded(browser, f"{selector} img.thumb"),
          "the imported event's thumbnail")
    first = browser.find_element(By.CSS_SELECTOR, "#event-list .event")
    assert first.get_attribute("data-event-id") == event.event_id.hex  # the newest comes first
    assert browser.find_elements(By.CSS_SELECTOR, '.camera[data-camera-id="school-camera"]')
    _wait(browser, lambda: browser.find_elements(By.CSS_SELECTOR,
                                                 f'.node[data-user="{exporter_auth[0]}"]'),
          "the node that imported")
    assert browser.execute_script("return window.statusPageMarker;") == "set before the import"

    _screenshot(browser, tmp_path)
