"""The status page (/status): who may see it, and what it serves, through Flask's test
client. The page in a real browser, following changes live, is in
test_status_page_browser.py."""
from __future__ import annotations

import base64
import io
import sys
import threading
import uuid
import zlib
from pathlib import Path

import factories
import pytest
from PIL import Image
from protocol import ProtocolClient
from sqlalchemy import delete, func, select

sys.path.insert(0, str(Path(__file__).parent))
from status_page_helpers import csrf_token, log_in, png_declaring, record_event  # noqa: E402

from meteorpi_model import EventSearch, ExportConfiguration  # noqa: E402
from meteorpi_server import create_app  # noqa: E402
from meteorpi_server.config import Config  # noqa: E402
from meteorpi_server.exporter import configs  # noqa: E402
from meteorpi_server.storage.orm import ServerInfoRow, UserRow  # noqa: E402
from meteorpi_server.web import thumbnails  # noqa: E402
from meteorpi_server.web.session_secret import session_secret  # noqa: E402

JSON_ENDPOINTS = ["/status/data", "/status/stream",
                  "/status/thumbnails/0123456789abcdef0123456789abcdef.jpg"]


@pytest.fixture
def settings(settings, tmp_path):
    settings["cache_dir"] = str(tmp_path / "cache")
    settings["feed_stream_seconds"] = 1  # a stream read here ends by itself
    return settings


@pytest.fixture
def viewer(make_user):
    return make_user("viewer", "user")


@pytest.fixture
def logged_in(client, viewer):
    response = log_in(client, *viewer)
    assert response.status_code == 303
    return client


# Logged out ----------------------------------------------------------------------------

def test_the_page_sends_a_visitor_to_the_login_form(client):
    assert client.get("/").headers["Location"] == "/status"
    response = client.get("/status")
    assert response.status_code == 302
    assert response.headers["Location"] == "/status/login"
    form = client.get("/status/login")
    assert form.status_code == 200
    assert 'name="password"' in form.get_data(as_text=True)


@pytest.mark.parametrize("path", JSON_ENDPOINTS)
def test_the_pages_data_stream_and_thumbnails_are_a_401_json_error_when_logged_out(client, path):
    response = client.get(path)
    assert response.status_code == 401
    assert response.get_json()["error"] == "unauthorized"
    assert "/status/login" in response.get_json()["message"]
    # No Basic challenge: it would make the browser pop up its own password prompt.
    assert "WWW-Authenticate" not in response.headers


# Logging in and out ----------------------------------------------------------------------

def test_a_user_with_the_user_role_logs_in_and_sees_the_cameras(client, services, viewer, tmp_path):
    record_event(services, tmp_path / "scratch", camera_id="roof-camera")
    response = log_in(client, *viewer)
    assert response.status_code == 303
    assert response.headers["Location"] == "/status"
    page = client.get("/status")
    assert page.status_code == 200
    assert "roof-camera" in page.get_data(as_text=True)
    assert page.headers["Cache-Control"] == "no-store"


def test_the_session_cookie_is_http_only_and_same_site(client, viewer):
    cookie = log_in(client, *viewer).headers["Set-Cookie"]
    assert "HttpOnly" in cookie
    assert "SameSite=Lax" in cookie
    assert "Path=/status" in cookie
    assert "Secure" not in cookie  # plain HTTP here; over HTTPS it is Secure


def test_the_session_cookie_is_secure_behind_an_https_proxy(client, viewer):
    token = csrf_token(client)
    response = client.post("/status/login", headers={"X-Forwarded-Proto": "https"},
                           data={"name": viewer[0], "password": viewer[1], "csrf_token": token})
    assert "Secure" in response.headers["Set-Cookie"]


def test_a_wrong_password_shows_an_error_and_no_data(client, services, viewer, tmp_path):
    record_event(services, tmp_path / "scratch", camera_id="roof-camera")
    response = log_in(client, viewer[0], "not the password")
    assert response.status_code == 401
    body = response.get_data(as_text=True)
    assert "wrong user name or password" in body
    assert "roof-camera" not in body
    assert client.get("/status/data").status_code == 401
    assert client.get("/status").headers["Location"] == "/status/login"


def test_a_login_without_the_forms_csrf_token_is_refused(client, viewer):
    client.get("/status/login")  # a session exists, so only the token is missing
    response = client.post("/status/login", data={"name": viewer[0], "password": viewer[1]})
    assert response.status_code == 400
    assert "log in again" in response.get_data(as_text=True)
    assert client.get("/status/data").status_code == 401


def test_a_login_with_another_sessions_csrf_token_is_refused(app, client, viewer):
    token = csrf_token(app.test_client())  # a token made for another browser
    response = client.post("/status/login",
                           data={"name": viewer[0], "password": viewer[1], "csrf_token": token})
    assert response.status_code == 400
    assert client.get("/status/data").status_code == 401


def test_a_user_without_the_user_role_is_refused(client, make_user):
    node = make_user("school-node", "import", "camera_admin")
    response = log_in(client, *node)
    assert response.status_code == 401
    assert "it needs the role &#39;user&#39;" in response.get_data(as_text=True)
    assert client.get("/status/data").status_code == 401


def test_logging_out_ends_the_session(logged_in):
    token = csrf_token(logged_in, "/status")
    response = logged_in.post("/status/logout", data={"csrf_token": token})
    assert response.status_code == 303
    assert response.headers["Location"] == "/status/login"
    assert logged_in.get("/status/data").status_code == 401


def test_a_log_out_without_the_csrf_token_is_refused(logged_in):
    response = logged_in.post("/status/logout")
    assert response.status_code == 400
    assert logged_in.get("/status/data").status_code == 200  # still logged in


def test_a_log_out_when_logged_out_is_a_401(client):
    assert client.post("/status/logout").status_code == 401


@pytest.mark.parametrize("change", ["password", "removed", "role"])
def test_a_changed_password_a_removed_user_or_a_lost_role_ends_the_session(logged_in, services,
                                                                           change):
    assert logged_in.get("/status/data").status_code == 200
    if change == "password":
        services.users.set_password("viewer", "an entirely new password")
    elif change == "removed":
        services.users.remove("viewer")
    else:
        services.users.set_roles("viewer", ["import"])
    assert logged_in.get("/status/data").status_code == 401
    assert logged_in.get("/status").headers["Location"] == "/status/login"


def test_the_cookie_carries_no_password_hash(client, viewer, services):
    with services.database.read() as session:
        stored = session.get(UserRow, "viewer").password_hash
    log_in(client, *viewer)
    # Signed, not encrypted: anyone holding the cookie can read it.
    cookie = client.get_cookie("meteorpi_session", path="/status").decoded_value
    payload = cookie.split(".")[1 if cookie.startswith(".") else 0]
    payload += "=" * (-len(payload) % 4)
    raw = base64.urlsafe_b64decode(payload)
    text = zlib.decompress(raw).decode() if cookie.startswith(".") else raw.decode()
    assert "viewer" in text
    assert stored not in text and stored.split("$")[-1] not in text


# The session key -------------------------------------------------------------------------

def test_every_worker_and_restart_signs_sessions_with_the_same_key(settings, client, viewer,
                                                                   services):
    log_in(client, *viewer)
    cookie = client.get_cookie("meteorpi_session", path="/status").value
    other = create_app(Config.from_mapping(settings))  # another worker, or after a restart
    try:
        other_client = other.test_client()
        other_client.set_cookie("meteorpi_session", cookie, path="/status")
        assert other_client.get("/status/data").status_code == 200
    finally:
        other.extensions["meteorpi"].database.dispose()
    assert session_secret(services.database) == session_secret(services.database)


def test_two_workers_making_the_session_key_at_once_agree_on_one(services):
    with services.database.write() as session:
        session.execute(delete(ServerInfoRow).where(ServerInfoRow.name == "session_secret"))
    start = threading.Barrier(4)
    keys = []

    def worker():
        start.wait()
        keys.append(session_secret(services.database))

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(keys) == 4 and len(set(keys)) == 1
    with services.database.read() as session:
        assert session.scalar(select(func.count()).select_from(ServerInfoRow)
                              .where(ServerInfoRow.name == "session_secret")) == 1


# The page's data -------------------------------------------------------------------------

def test_the_data_shows_cameras_newest_events_importing_nodes_and_export_targets(
        logged_in, services, tmp_path, exporter_auth):
    record_event(services, tmp_path / "scratch", camera_id="roof-camera")
    dataset = factories.DataSet(tmp_path / "node")
    imported = dataset.add_event(factories.status("school-camera"), 1,
                                 time_ms=factories.NIGHT + 60_000)
    ProtocolClient(logged_in, exporter_auth).replicate(imported, dataset.statuses, dataset.contents)
    services.activity.flush()  # the nodes' figures, else written within a second
    with services.database.write() as session:
        configs.add(session, ExportConfiguration(
            config_id=uuid.uuid4(), name="central", target_url="https://central.example/import",
            user_id="up", password="secret", search=EventSearch()))

    data = logged_in.get("/status/data").get_json()
    assert data["health"]["status"] == "ok"
    cameras = {camera["camera_id"]: camera for camera in data["cameras"]}
    assert set(cameras) == {"roof-camera", "school-camera"}
    assert cameras["school-camera"]["connected"] is True
    assert cameras["school-camera"]["event_count"] == 1
    assert cameras["school-camera"]["file_count"] == 1
    assert [event["camera_id"] for event in data["events"]] == ["school-camera", "roof-camera"]
    assert data["events"][0]["event_id"] == imported.event_id.hex
    assert data["events"][0]["thumbnail"] == \
        f"/status/thumbnails/{imported.files[0].file_id.hex}.jpg"
    assert [node["user"] for node in data["nodes"]] == [exporter_auth[0]]
    assert [(target["name"], target["state"]) for target in data["exports"]] == \
        [("central", "idle")]
    assert "secret" not in logged_in.get("/status/data").get_data(as_text=True)


def test_the_stream_announces_changes_to_a_logged_in_user(logged_in, services, tmp_path):
    record_event(services, tmp_path / "scratch")
    response = logged_in.get("/status/stream?since=0")
    assert response.status_code == 200
    assert response.mimetype == "text/event-stream"
    body = response.get_data(as_text=True)  # the stream ends after feed_stream_seconds
    assert body.count("event: change") == 2  # the camera's status, then its event


# Thumbnails ------------------------------------------------------------------------------

def test_a_thumbnail_is_a_small_jpeg_made_once_and_then_served_from_the_cache(
        logged_in, services, settings, tmp_path, monkeypatch):
    event = record_event(services, tmp_path / "scratch")
    record = event.files[0]
    url = f"/status/thumbnails/{record.file_id.hex}.jpg"
    response = logged_in.get(url)
    assert response.status_code == 200
    assert response.mimetype == "image/jpeg"
    assert "private" in response.headers["Cache-Control"]
    assert "max-age" in response.headers["Cache-Control"]
    image = Image.open(io.BytesIO(response.data))
    assert image.format == "JPEG"
    assert max(image.size) == thumbnails.SIZE
    assert image.size == (320, 240)  # the 800 x 600 original's shape
    cached = Path(settings["cache_dir"]) / "thumbnails" / f"{record.file_id.hex}-{record.md5}.jpg"
    assert cached.read_bytes() == response.data

    def no_decoding(_source):
        raise AssertionError("the image was decoded again")

    monkeypatch.setattr(thumbnails, "_shrink", no_decoding)
    again = logged_in.get(url)
    assert again.status_code == 200 and again.data == response.data
    unchanged = logged_in.get(url, headers={"If-None-Match": response.headers["ETag"]})
    assert unchanged.status_code == 304


def test_a_file_that_is_not_an_image_has_no_thumbnail(logged_in, services, tmp_path):
    event = record_event(services, tmp_path / "scratch", data=b"a video, say",
                         mime_type="video/mp4")
    response = logged_in.get(f"/status/thumbnails/{event.files[0].file_id.hex}.jpg")
    assert response.status_code == 404
    assert response.get_json()["error"] == "not_an_image"
    assert "video/mp4" in response.get_json()["message"]


@pytest.mark.parametrize("data", [b"\x89PNG\r\n\x1a\n but not really a PNG", png_declaring(60_000, 60_000)],
                         ids=["corrupt", "decompression-bomb"])
def test_an_image_that_cannot_be_read_is_a_clear_422_every_time(logged_in, services, tmp_path,
                                                                data, monkeypatch):
    event = record_event(services, tmp_path / "scratch", data=data)
    url = f"/status/thumbnails/{event.files[0].file_id.hex}.jpg"
    response = logged_in.get(url)
    assert response.status_code == 422
    assert response.get_json()["error"] == "unreadable_image"

    def no_decoding(_source):
        raise AssertionError("the image was decoded again")

    monkeypatch.setattr(thumbnails, "_shrink", no_decoding)  # the refusal is remembered
    assert logged_in.get(url).status_code == 422


def test_a_thumbnail_of_no_file_is_a_404(logged_in):
    assert logged_in.get("/status/thumbnails/0123456789abcdef0123456789abcdef.jpg").status_code == 404
    assert logged_in.get("/status/thumbnails/not-an-id.jpg").status_code == 404


def test_a_failed_login_is_counted_in_the_metrics(client, viewer):
    from scrapes import scrape

    before = scrape(client).value("meteorpi_auth_failures_total", reason="login")
    assert log_in(client, viewer[0], "not the password").status_code == 401
    assert scrape(client).value("meteorpi_auth_failures_total", reason="login") == before + 1
